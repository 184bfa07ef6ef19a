# kiln drain: the buildkitd preStop hook. The kubelet sends SIGTERM, which aborts every build
# in flight, only after this returns, so it waits until the daemon has no active build.
#
#   sh -c "$script" kiln-drain ADDR BOUND POLL
#
# ADDR is the pod's own unix socket; BOUND the most seconds to wait (below the pod's
# terminationGracePeriodSeconds, so buildkitd still has time to stop); POLL the seconds
# between two looks. KILN_DRAIN_BOUND, KILN_DRAIN_POLL and KILN_DRAIN_LOG override them
# (tests). Runs on the moby/buildkit image's busybox sh with buildctl: POSIX sh only.
#
# Active build: a record with no completion time in `buildctl debug histories`, which
# prints one JSON event per line and exits. An active build comes as a STARTED event, whose
# line starts with {"record": (encoding/json leaves out the zero type), and its record has
# no "CompletedAt" key. JSON escapes every quote inside user strings (build args), so a
# bare "CompletedAt": is always the key; a build arg named CompletedAt cannot hide a
# STARTED event either, since the line start is checked first.

addr=$1
bound=${KILN_DRAIN_BOUND:-$2}
poll=${KILN_DRAIN_POLL:-$3}
# A hook's own output is shown nowhere unless it fails; PID 1's stdout is the container
# log, which `kubectl logs` shows.
logfile=${KILN_DRAIN_LOG:-/proc/1/fd/1}

log() {
  line="kiln-drain: $*"
  { printf '%s\n' "$line" >>"$logfile"; } 2>/dev/null || printf '%s\n' "$line"
}

# One look: prints the refs of the active builds (one per line); fails when buildctl
# cannot reach the daemon within SECONDS.
active_builds() {
  seconds=$1
  if command -v timeout >/dev/null 2>&1; then
    out=$(timeout "$seconds" buildctl --addr "$addr" debug histories --format '{{json .}}' 2>/dev/null) || return 1
  else
    out=$(buildctl --addr "$addr" debug histories --format '{{json .}}' 2>/dev/null) || return 1
  fi
  printf '%s\n' "$out" | awk '
    /^[{]"record":/ || (/"record":/ && !/"CompletedAt":/) {
      ref = "?"
      if (match($0, /"record":[{]"Ref":"[^"]*"/)) ref = substr($0, RSTART + 17, RLENGTH - 18)
      print ref
    }'
}

start=$(date +%s)
reached=no
seen=no
while :; do
  now=$(date +%s)
  waited=$((now - start))
  left=$((bound - waited))
  call=10
  [ "$left" -lt "$call" ] && call=$left
  [ "$call" -lt 1 ] && call=1
  if ! refs=$(active_builds "$call"); then
    # A daemon that never answers has no build to protect: never hold a dead pod. One that
    # answered before gets one more look (a busy daemon may miss one deadline).
    if [ "$reached" = yes ] && [ "$left" -gt "$poll" ]; then
      reached=lost
      log "buildkitd at $addr did not answer; trying once more in ${poll}s"
      sleep "$poll"
      continue
    fi
    log "cannot reach buildkitd at $addr; stopping now (waited ${waited}s)"
    exit 0
  fi
  reached=yes
  count=$(printf '%s' "$refs" | grep -c .)
  now=$(date +%s)
  waited=$((now - start))
  if [ "$count" -eq 0 ]; then
    # Idle from the start: wait one poll anyway, for a client that resolved this pod just
    # before it left the Service endpoints.
    if [ "$waited" -ge "$poll" ] || [ "$seen" = yes ]; then
      log "no active build; stopping buildkitd (drained in ${waited}s)"
      exit 0
    fi
  else
    seen=yes
    log "waiting for $count active build(s): $(printf '%s' "$refs" | tr '\n' ' ')(${waited}s of at most ${bound}s)"
  fi
  left=$((bound - waited))
  if [ "$left" -le 0 ]; then
    log "gave up after ${waited}s with $count active build(s); they will be interrupted"
    exit 0
  fi
  nap=$poll
  [ "$left" -lt "$nap" ] && nap=$left
  sleep "$nap"
done

//! The buildkitd preStop hook: drain before stop.
//!
//! buildkitd aborts every build in flight on SIGTERM (moby/buildkit#4090), and the kubelet
//! sends SIGTERM only once the preStop hook has returned. The hook (`drain.sh`, the one copy
//! of the script) polls `buildctl debug histories` over the pod's own unix socket until no
//! build is active, logging what it waits for to the container log. It returns at once when
//! the daemon cannot be reached, and gives up at [`bound`], which leaves buildkitd
//! [`STOP_ALLOWANCE`] of the grace period to shut down.

use k8s_openapi::api::core::v1::{ExecAction, LifecycleHandler};

use crate::duration::Duration;
use crate::overlay::Overlay;

/// The hook script: POSIX sh for the moby/buildkit image's busybox, plus buildctl.
pub const SCRIPT: &str = include_str!("drain.sh");

/// `$0` of the script, shown by `ps` while it runs.
pub const SCRIPT_NAME: &str = "kiln-drain";

/// Seconds between two looks at the daemon's builds.
pub const POLL: Duration = Duration::from_secs(5);

/// The part of the grace period kept for buildkitd itself after the hook returns: SIGTERM,
/// gRPC GracefulStop and unmounting the build's snapshots.
pub const STOP_ALLOWANCE: Duration = Duration::from_secs(60);

/// The longest the hook waits: the grace period ([`Overlay::termination_grace`], the Tekton
/// timeout plus [`crate::overlay::DRAIN_MARGIN`]) less [`STOP_ALLOWANCE`]. A build that
/// started just before the drain began can run for the whole Tekton timeout and still end
/// inside this bound.
pub fn bound(overlay: &Overlay) -> Duration {
    Duration::from_secs(
        overlay
            .termination_grace()
            .as_secs()
            .saturating_sub(STOP_ALLOWANCE.as_secs())
            .max(POLL.as_secs()),
    )
}

/// The preStop handler: `/bin/sh -c <script> kiln-drain <socket> <bound> <poll>`.
pub fn pre_stop(overlay: &Overlay, socket: &str) -> LifecycleHandler {
    LifecycleHandler {
        exec: Some(ExecAction {
            command: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                SCRIPT.into(),
                SCRIPT_NAME.into(),
                socket.into(),
                bound(overlay).as_secs().to_string(),
                POLL.as_secs().to_string(),
            ]),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::DRAIN_MARGIN;

    #[test]
    fn bound_covers_the_longest_build_and_leaves_time_to_stop() {
        let mut overlay = Overlay::default();
        for timeout in [1, 60, 3_600, 2 * 86_400] {
            overlay.tekton.timeout = Duration::from_secs(timeout);
            let bound = bound(&overlay).as_secs();
            let grace = overlay.termination_grace().as_secs();
            assert!(bound > timeout + POLL.as_secs(), "{timeout}: bound {bound}");
            assert_eq!(grace - bound, STOP_ALLOWANCE.as_secs());
        }
        assert!(DRAIN_MARGIN.as_secs() > STOP_ALLOWANCE.as_secs() + 2 * POLL.as_secs());
    }

    #[test]
    fn script_is_posix_and_uses_only_the_image_tools() {
        assert!(!SCRIPT.contains("#!/bin/bash"));
        for bashism in [
            "[[",
            "local ",
            "function ",
            "$((RANDOM",
            "${@:",
            "<<<",
            "pipefail",
        ] {
            assert!(!SCRIPT.contains(bashism), "{bashism} is not POSIX sh");
        }
        for tool in ["jq ", "curl ", "bash", "kiln build"] {
            assert!(!SCRIPT.contains(tool), "{tool} is not in the moby/buildkit image");
        }
        let command = pre_stop(&Overlay::default(), "unix:///run/buildkit/buildkitd.sock")
            .exec
            .unwrap()
            .command
            .unwrap();
        assert_eq!(command[..2], ["/bin/sh", "-c"]);
        assert_eq!(
            command[3..5],
            ["kiln-drain", "unix:///run/buildkit/buildkitd.sock"]
        );
    }
}

//! The in-process API server of the rotate tests, as a process, for scripts/bench-rotate.
//!
//! `cargo run --example apiserver -- DIR` starts it with two farms, each with the rendered
//! Secret shells, a Deployment and the `kiln-config` ConfigMap (the built-in defaults):
//! `buildkit` (no tenant but its own namespace) and `farm50` (50 tenants, `farm50-t01` …
//! `farm50-t50`, each with its client Secret shell); writes `DIR/kubeconfig`, prints the
//! port, and serves until stdin closes.
//! Not part of the kiln CLI.

#[path = "../tests/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use serde_json::json;

/// A farm in `namespace` with `tenants` tenant namespaces (`<namespace>-t01`, …): the
/// rendered Secret shells in each, a Deployment, and the `kiln-config` ConfigMap.
fn farm(server: &apiserver::ApiServer, namespace: &str, tenants: usize) {
    let shell = |ns: &str, name: &str| {
        server.insert(
            "secrets",
            ns,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque"}),
        );
    };
    for name in ["buildkit-ca", "buildkit-daemon-certs", "buildkit-client-certs"] {
        shell(namespace, name);
    }
    server.insert(
        "deployments",
        namespace,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "buildkitd"},
            "spec": {"replicas": 2, "template": {"metadata": {}}},
        }),
    );
    let mut overlay = kiln::overlay::Overlay {
        namespace: namespace.into(),
        ..kiln::overlay::Overlay::default()
    };
    for i in 1..=tenants {
        let tenant = format!("{namespace}-t{i:02}");
        shell(&tenant, "buildkit-client-certs");
        overlay.tenants.push(kiln::overlay::Tenant {
            namespace: tenant,
            task: false,
        });
    }
    let policy = kiln::yaml::to_string(&overlay).expect("the overlay as YAML");
    server.insert(
        "configmaps",
        namespace,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kiln-config"}, "data": {"overlay.yaml": policy}}),
    );
}

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: apiserver DIR");
        std::process::exit(2);
    };
    let server = apiserver::ApiServer::start();
    farm(&server, "buildkit", 0);
    farm(&server, "farm50", 50);
    server.kubeconfig(std::path::Path::new(&dir), "buildkit");
    println!("{}", server.port);
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}

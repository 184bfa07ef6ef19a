//! The in-process API server of the rotate tests, as a process, for scripts/bench-rotate.
//!
//! `cargo run --example apiserver -- DIR` starts it with the rendered Secret shells, a
//! Deployment and the `kiln-config` ConfigMap (the built-in defaults) in namespace
//! `buildkit`, writes `DIR/kubeconfig`, prints the port, and serves until stdin closes.
//! Not part of the kiln CLI.

#[path = "../tests/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use serde_json::json;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: apiserver DIR");
        std::process::exit(2);
    };
    let server = apiserver::ApiServer::start();
    for name in ["buildkit-ca", "buildkit-daemon-certs", "buildkit-client-certs"] {
        server.insert(
            "secrets",
            "buildkit",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque"}),
        );
    }
    server.insert(
        "deployments",
        "buildkit",
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "buildkitd"},
            "spec": {"replicas": 2, "template": {"metadata": {}}},
        }),
    );
    let policy =
        kiln::yaml::to_string(&kiln::overlay::Overlay::default()).expect("the default overlay as YAML");
    server.insert(
        "configmaps",
        "buildkit",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kiln-config"}, "data": {"overlay.yaml": policy}}),
    );
    server.kubeconfig(std::path::Path::new(&dir), "buildkit");
    println!("{}", server.port);
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}

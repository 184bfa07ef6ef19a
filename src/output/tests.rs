//! Tests of the layout and of writing trees.

use super::*;

#[test]
fn owners() {
    assert_eq!(owner("dev/deployment-buildkitd.yaml"), Some("dev"));
    assert_eq!(owner("argocd/dev.yaml"), Some("dev"));
    assert_eq!(owner("flux/kustomization-prod.yaml"), Some("prod"));
    assert_eq!(owner("flux/gitrepository.yaml"), None);
    assert_eq!(owner(".kiln-manifest"), None);
}

fn resolved(name: &str) -> Resolved {
    Resolved {
        name: name.into(),
        overlay: crate::overlay::Overlay::default(),
        source: format!("overlays/{name}.yaml"),
        chain: vec![name.into()],
        extras: Vec::new(),
    }
}

fn object(kind: &str, name: &str) -> Object {
    Object {
        api_version: "v1".into(),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
        value: serde_json::json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}),
    }
}

#[test]
fn layout_lists_files_in_a_kustomization() {
    let r = resolved("dev");
    let unit = Unit {
        resolved: &r,
        objects: vec![object("ConfigMap", "b"), object("ConfigMap", "a")],
        flavor: Flavor::Argocd,
    };
    let tree = layout(&[unit], "rendered", None).unwrap();
    let paths: Vec<&str> = tree.files.keys().map(FilePath::as_str).collect();
    assert_eq!(
        paths,
        [
            "argocd/dev.yaml",
            "dev/configmap-a.yaml",
            "dev/configmap-b.yaml",
            "dev/kustomization.yaml"
        ]
    );
    assert!(
        tree.files["dev/kustomization.yaml"]
            .ends_with("resources:\n- configmap-a.yaml\n- configmap-b.yaml\n")
    );
    assert!(tree.files["argocd/dev.yaml"].contains("path: rendered/dev\n"));
    assert!(tree.files["dev/configmap-a.yaml"].starts_with("# Rendered by kiln "));
}

#[test]
fn layout_errors() {
    let r = resolved("dev");
    let twice = Unit {
        resolved: &r,
        objects: vec![object("ConfigMap", "a"), object("ConfigMap", "a")],
        flavor: Flavor::Kustomize,
    };
    let e = layout(&[twice], "rendered", None).unwrap_err().to_string();
    assert_eq!(
        e,
        "failed to lay out dev/configmap-a.yaml: two objects render to it (ConfigMap a and ConfigMap a); rename one"
    );

    let flux = resolved("flux");
    let unit = Unit {
        resolved: &flux,
        objects: vec![object("ConfigMap", "a")],
        flavor: Flavor::Kustomize,
    };
    assert!(
        layout(&[unit], "rendered", None)
            .unwrap_err()
            .to_string()
            .contains("reserved")
    );

    let mut prod = resolved("prod");
    prod.overlay.gitops.revision = "release".into();
    let units = [
        Unit {
            resolved: &r,
            objects: vec![object("ConfigMap", "a")],
            flavor: Flavor::Flux,
        },
        Unit {
            resolved: &prod,
            objects: vec![object("ConfigMap", "b")],
            flavor: Flavor::Flux,
        },
    ];
    assert!(matches!(
        layout(&units, "rendered", None),
        Err(OutputError::FluxSource { .. })
    ));

    let empty = Unit {
        resolved: &r,
        objects: vec![],
        flavor: Flavor::Kustomize,
    };
    assert!(matches!(
        layout(std::slice::from_ref(&empty), "rendered", None),
        Err(OutputError::Empty)
    ));
    assert!(matches!(stream(&[empty]), Err(OutputError::Empty)));
}

#[test]
fn refuses_a_git_work_tree_as_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    let e = write(dir.path(), &Tree::default()).unwrap_err().to_string();
    assert!(e.contains("it is a git work tree root"), "{e}");
}

#[test]
fn writes_through_a_symlinked_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
    let tree = Tree {
        files: files(&[("a/b.yaml", "x\n")]),
        scope: None,
    };
    write(&dir.path().join("link"), &tree).unwrap();
    assert!(dir.path().join("link").is_symlink());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("real/a/b.yaml")).unwrap(),
        "x\n"
    );
    assert!(check(&dir.path().join("link"), &tree).unwrap().is_empty());
}

#[test]
fn a_write_that_fails_halfway_leaves_the_old_tree() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rendered");
    std::fs::create_dir(&out).unwrap();
    // A foreign *file* named like an overlay directory: carrying it over collides with
    // the directory the new files need, after some files are already written.
    std::fs::write(out.join("dev"), "mine\n").unwrap();
    let tree = Tree {
        files: files(&[("a/x.yaml", "a\n"), ("dev/x.yaml", "x\n")]),
        scope: None,
    };
    let err = write(&out, &tree).unwrap_err().to_string();
    assert!(err.starts_with("failed to "), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("dev")).unwrap(), "mine\n");
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["rendered"], "no temporary directory is left behind");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn an_interrupted_swap_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    // A pid above any pid_max: no such process runs.
    let old = dir.path().join(".rendered.kiln-old-999999999");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join(MANIFEST), "").unwrap();
    std::fs::write(old.join("NOTES.md"), "mine\n").unwrap();
    let tree = Tree {
        files: files(&[("a/x.yaml", "x\n")]),
        scope: None,
    };
    write(&dir.path().join("rendered"), &tree).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rendered/NOTES.md")).unwrap(),
        "mine\n"
    );
    assert!(!old.exists());
}

#[test]
fn paths_join() {
    assert_eq!(join_path("rendered", "dev"), "rendered/dev");
    assert_eq!(join_path("./examples/argocd/", "dev"), "examples/argocd/dev");
    assert_eq!(join_path(".", "dev"), "dev");
}

fn files(list: &[(&str, &str)]) -> BTreeMap<FilePath, String> {
    list.iter()
        .map(|(p, c)| {
            let parts: Vec<&str> = p.split('/').collect();
            (FilePath::new(&parts).unwrap(), c.to_string())
        })
        .collect()
}

#[test]
fn objects_of_other_namespaces_go_below_their_namespace() {
    let mut r = resolved("dev");
    r.overlay.namespace = "buildkit-dev".into();
    let mut home = object("Secret", "client");
    home.namespace = Some("buildkit-dev".into());
    let mut tenant = home.clone();
    tenant.namespace = Some("team-a".into());
    let unit = Unit {
        resolved: &r,
        objects: vec![home, tenant],
        flavor: Flavor::Kustomize,
    };
    let tree = layout(&[unit], "rendered", None).unwrap();
    let paths: Vec<&str> = tree.files.keys().map(FilePath::as_str).collect();
    assert_eq!(
        paths,
        [
            "dev/kustomization.yaml",
            "dev/secret-client.yaml",
            "dev/team-a/secret-client.yaml"
        ]
    );
    assert!(
        tree.files["dev/kustomization.yaml"]
            .ends_with("resources:\n- secret-client.yaml\n- team-a/secret-client.yaml\n")
    );

    let mut bad = object("Secret", "client");
    bad.namespace = Some("../../up".into());
    let unit = Unit {
        resolved: &r,
        objects: vec![bad],
        flavor: Flavor::Kustomize,
    };
    let e = layout(&[unit], "rendered", None).unwrap_err().to_string();
    assert!(
        e.starts_with("failed to lay out overlay dev (overlays/dev.yaml): metadata.namespace \"../../up\" is not a DNS-1123 label"),
        "{e}"
    );
}

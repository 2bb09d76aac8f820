//! `crds/` and `charts/snapshot-operator/crds/` hold exactly what the Rust types generate.
//! `make crds` (UPDATE_CRDS=1) rewrites them.

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    let documents = snapshot_operator::api::crd_documents();
    assert_eq!(documents.len(), 3);
    for dir in ["crds", "charts/snapshot-operator/crds"] {
        for (file, yaml) in &documents {
            let path = root.join(dir).join(file);
            if update {
                std::fs::write(&path, yaml).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == *yaml,
                "{} differs from what the Rust types generate; run `make crds`",
                path.display()
            );
        }
        let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut expected: Vec<String> = documents.iter().map(|(f, _)| f.clone()).collect();
        expected.sort();
        assert_eq!(files, expected, "unexpected files in {dir}");
    }
}

//! `skewless plugin new NAME`: the scaffolded crate joins the plugins workspace, builds as
//! a component with `cargo build --release --target wasm32-wasip2` and passes its own
//! test as is, and the host loads it. Done in a copy of plugins/ (and wit/), built into the
//! checkout's plugins/target so the dependencies are already compiled.

mod common;

use std::path::Path;
use std::process::Command;

use skewless::config::PluginsConfig;
use skewless::plugins::PluginStore;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.file_name().unwrap() == "target" {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(path.file_name().unwrap()));
        } else {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn cargo(workspace: &Path, args: &[&str]) {
    // Output captured (shown on failure), so the scaffolded crate's own test lines do not
    // mix with this suite's.
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", common::manifest_dir().join("plugins/target"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo {args:?} failed in {}:\n{}\n{}",
        workspace.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_new_scaffolds_a_crate_that_builds_tests_and_loads() {
    let root = tempfile::tempdir().unwrap();
    copy_dir(&common::manifest_dir().join("plugins"), &root.path().join("plugins"));
    copy_dir(&common::manifest_dir().join("wit"), &root.path().join("wit"));
    let plugins = root.path().join("plugins");
    let name = "scaffold_probe";

    let out = assert_cmd::Command::cargo_bin("skewless")
        .unwrap()
        .args(["plugin", "new", name, "--dir"])
        .arg(&plugins)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("[OK] Created plugin crate"), "{stdout}");
    let manifest = std::fs::read_to_string(plugins.join("Cargo.toml")).unwrap();
    assert!(manifest.contains(&format!("\"{name}\"")), "{manifest}");
    // Comments and the rest of the workspace manifest are kept.
    assert!(manifest.contains("[workspace.dependencies]"), "{manifest}");

    cargo(&plugins, &["test", "--release", "--offline", "-p", name]);
    cargo(
        &plugins,
        &["build", "--release", "--offline", "--target", "wasm32-wasip2", "-p", name],
    );
    let wasm = common::manifest_dir()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    let bytes = std::fs::read(&wasm).unwrap();
    let _ = std::fs::remove_file(&wasm);
    let store = PluginStore::new(&PluginsConfig::default(), Path::new(".")).unwrap();
    let plugin = store.load_bytes("scaffold_probe.wasm", &bytes).await.unwrap();
    assert_eq!(plugin.info().name, name);
    assert_eq!(plugin.info().outputs[0].name, "annual_fee");

    // Twice, or a bad name: a clear error, nothing written.
    assert_cmd::Command::cargo_bin("skewless")
        .unwrap()
        .args(["plugin", "new", name, "--dir"])
        .arg(&plugins)
        .assert()
        .code(4)
        .stderr(predicates::str::contains("already exists"));
    assert_cmd::Command::cargo_bin("skewless")
        .unwrap()
        .args(["plugin", "new", "9-lives", "--dir"])
        .arg(&plugins)
        .assert()
        .code(4)
        .stderr(predicates::str::contains("not a valid plugin name"));
}

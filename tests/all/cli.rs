//! The command line: `weir check`, the config and the TLS files it names.

use std::process::Command;

use weir_tests::weir::weir_bin;

fn check(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).expect("write");
    check_file(&path)
}

/// `weir check` on the config at `path`: success, stdout, stderr (the path written `weir.toml`).
fn check_file(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(weir_bin())
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .expect("run weir check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).replace(&*path.to_string_lossy(), "weir.toml"),
        String::from_utf8_lossy(&out.stderr).replace(&*path.to_string_lossy(), "weir.toml"),
    )
}

#[test]
fn check_reports_every_mistake_with_its_line() {
    let (ok, _, stderr) = check(
        r#"[[listeners]]
address = "127.0.0.1:8080"

[[clusters]]
name = "app"
endpoints = []

[[clusters]]
name = "app"
endpoints = ["10.0.0.1"]

[[routes]]
name = "api"
cluster = "apps"
"#,
    );
    assert!(!ok, "weir check accepted a broken config");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(
        errors,
        [
            "error: weir.toml:6:13: cluster \"app\" has no endpoints",
            "error: weir.toml:9:8: duplicate cluster name \"app\" (first defined on line 5)",
            "error: weir.toml:10:14: cluster \"app\": endpoint \"10.0.0.1\" has no port; write it as host:port",
            "error: weir.toml:14:11: route \"api\" names cluster \"apps\", which is not defined (defined: app, app)",
        ],
        "stderr:\n{stderr}"
    );
}

#[test]
fn check_accepts_a_valid_config_and_names_syntax_errors() {
    let (ok, stdout, _) = check("[[listeners]]\naddress = \"127.0.0.1:8080\"\n");
    assert!(ok);
    assert_eq!(
        stdout.trim(),
        "weir.toml: ok (1 listeners, 0 clusters, 0 routes)"
    );

    let (ok, _, stderr) = check("[[listeners]]\naddress = 127.0.0.1\n");
    assert!(!ok);
    assert!(stderr.contains("error: weir.toml:2:"), "{stderr}");
}

#[test]
fn check_loads_tls_files_and_names_the_broken_one() {
    let ca = weir_tests::certs::Ca::new("check CA");
    let (good, other) = (ca.server(&["a.test"], 1), ca.server(&["b.test"], 2));
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, contents: &str| {
        std::fs::write(dir.path().join(name), contents).expect("write");
    };
    write("a.pem", &good.cert);
    write("a.key", &good.key);
    write("b.pem", &other.cert);
    // A key that is not b.pem's, and a CA file that is not PEM.
    write("b.key", &good.key);
    write("ca.pem", "not a certificate");
    let config = r#"
[[listeners]]
address = "127.0.0.1:8443"
tls = { certificates = [{ cert = "a.pem", key = "a.key" }, { cert = "b.pem", key = "b.key" }] }

[[clusters]]
name = "secure"
endpoints = ["https://127.0.0.1:9443"]
tls = { ca = "ca.pem" }
"#;
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).expect("write");
    let (ok, _, stderr) = check_file(&path);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("listener 127.0.0.1:8443:")
            && stderr.contains("b.pem and ")
            && stderr.contains("b.key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cluster \"secure\":") && stderr.contains("ca.pem"),
        "{stderr}"
    );

    // Fixed, the same config checks clean.
    write("b.key", &other.key);
    write("ca.pem", &ca.pem);
    let (ok, _, stderr) = check_file(&path);
    assert!(ok, "{stderr}");
}

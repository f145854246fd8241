//! The `balancer` executable's command line: wrong arguments are refused
//! with a clear message and the usage exit code, before anything is touched.

use std::process::{Command, Output};

use balancer_tests::privilege;

fn balancer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_balancer"))
        .args(args)
        .output()
        .expect("cannot run the balancer binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_the_run_subcommand() {
    let out = balancer(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run"), "help does not list `run`:\n{text}");
}

#[test]
fn run_without_an_interface_fails_before_touching_anything() {
    let empty = std::env::temp_dir().join(format!("balancer-cli-{}.toml", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    let out = balancer(&["run", "--config", empty.to_str().unwrap()]);
    std::fs::remove_file(&empty).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no interface to attach to"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_xdp_mode_is_a_usage_error() {
    let out = balancer(&["run", "-i", "lo", "--xdp-mode", "turbo"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("turbo"), "{}", stderr(&out));
}

#[test]
fn a_malformed_duration_is_a_usage_error() {
    let out = balancer(&["run", "-i", "lo", "--stats-interval", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("soon"), "{}", stderr(&out));
}

#[test]
fn a_missing_interface_fails_with_its_name() {
    if !privilege::check("cli_missing_interface") {
        return;
    }
    let out = balancer(&["run", "-i", "nosuchif0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuchif0"), "{}", stderr(&out));
}

#[test]
fn check_config_reports_every_problem_with_its_line() {
    let path = std::env::temp_dir().join(format!("balancer-check-{}.toml", std::process::id()));
    std::fs::write(&path, "[datapath]\nring_size = 10\n\n[[vip]]\nname = \"a b\"\naddress = \"192.0.2.1\"\nport = 1\nprotocol = \"udp\"\n").unwrap();
    let out = balancer(&["check-config", path.to_str().unwrap()]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let file = path.display().to_string();
    assert!(
        text.contains(&format!("{file}:2: ring_size 10 must be a prime")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{file}:5: VIP name \"a b\"")),
        "{text}"
    );
    std::fs::write(&path, "[[vip]]\nname = \"dns\"\naddress = \"192.0.2.1\"\nport = 53\nprotocol = \"udp\"\n[vip.health_check]\nkind = \"none\"\n[[vip.backend]]\naddress = \"10.0.0.1\"\n").unwrap();
    let out = balancer(&["check-config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 VIPs, 1 backends)"));
}

#[test]
fn check_config_prints_warnings_and_the_memory_the_maps_take() {
    let path = std::env::temp_dir().join(format!("balancer-memory-{}.toml", std::process::id()));
    let backends: Vec<String> = (1..=11)
        .map(|i| format!("{{ address = \"10.0.0.{i}\" }}"))
        .collect();
    std::fs::write(
        &path,
        format!(
            "[datapath]\nring_size = 1021\nflow_table_size = 1048576\n\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.1\"\nport = 80\nprotocol = \"tcp\"\nbackend = [{}]\n",
            backends.join(", ")
        ),
    )
    .unwrap();
    let out = balancer(&["check-config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    let (text, file) = (stderr(&out), path.display().to_string());
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "{file}:2: warning: ring_size 1021 is below 100 slots for each of the 11 backends of VIP \"web\""
        )),
        "{text}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{file}: the maps take 174.6 MiB (connection table 120.0 MiB, rings 0.0 MiB, persistence table 13.0 MiB, NAT tables 19.5 MiB, handshake, source, fragment and NAT open tables 22.1 MiB) of kernel memory"
        )),
        "{stdout}"
    );
}

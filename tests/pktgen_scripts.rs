//! bench/pktgen's scripts on a kernel without the pktgen module: each runs in dry-run mode
//! and must print exactly the /proc/net/pktgen writes (and reads) in bench/pktgen/expected;
//! bad options fail with exit code 2 naming the option; shellcheck finds nothing (under
//! CI=true a missing shellcheck is a failure, as .ci/run installs it).

use std::path::Path;
use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/pktgen");

fn dry_run(script: &str, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(Path::new(DIR).join(script))
        .args(args)
        .env("DRY_RUN", "1")
        .env_remove("PG_DIR")
        .output()
        .unwrap()
}

/// The expected files are the scripts' own dry-run output, checked in; regenerate with the
/// arguments below after an intended change and review the diff.
const CASES: &[(&str, &[&str], &str)] = &[
    (
        "pktgen_nat.sh",
        &[
            "-i",
            "eth1",
            "-d",
            "192.168.2.2",
            "-m",
            "02:00:00:00:00:01",
            "-s",
            "10.0.0.0",
            "-H",
            "65536",
            "-P",
            "16",
            "-t",
            "2",
            "-f",
            "2",
            "-z",
            "64",
        ],
        "pktgen_nat_1m_flows.txt",
    ),
    (
        "pktgen_nat.sh",
        &[
            "-i",
            "eth1",
            "-d",
            "192.168.2.2",
            "-D",
            "64",
            "-m",
            "02:00:00:00:00:01",
            "-s",
            "10.1.0.1",
            "-H",
            "256",
            "-P",
            "1",
            "-t",
            "1",
            "-r",
            "100000",
            "-c",
            "1000000",
            "-z",
            "1518",
            "-S",
            "-F",
            "256",
            "-l",
            "4",
        ],
        "pktgen_nat_256_flows_paced.txt",
    ),
    (
        "counters.sh",
        &[
            "-i",
            "eth1",
            "-i",
            "eth2",
            "-u",
            "http://127.0.0.1:9180/metrics",
            "-w",
            "5",
        ],
        "counters.txt",
    ),
];

#[test]
fn dry_runs_print_the_expected_pktgen_writes() {
    for (script, args, expected) in CASES {
        let out = dry_run(script, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{script} {args:?}: {stderr}");
        let got = String::from_utf8(out.stdout).unwrap();
        let want = std::fs::read_to_string(Path::new(DIR).join("expected").join(expected))
            .unwrap_or_else(|e| panic!("{expected}: {e}"));
        assert_eq!(
            got, want,
            "{script} {args:?} differs from expected/{expected}"
        );
        // `-n` is the same as DRY_RUN=1.
        let mut with_n = vec!["-n"];
        with_n.extend_from_slice(args);
        let out = Command::new("bash")
            .arg(Path::new(DIR).join(script))
            .args(&with_n)
            .env_remove("DRY_RUN")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want, "{script} -n");
    }
}

#[test]
fn the_1m_flow_setup_splits_the_hosts_between_threads() {
    let want =
        std::fs::read_to_string(Path::new(DIR).join("expected/pktgen_nat_1m_flows.txt")).unwrap();
    for line in [
        "echo \"add_device eth1@0\" > /proc/net/pktgen/kpktgend_2",
        "echo \"add_device eth1@1\" > /proc/net/pktgen/kpktgend_3",
        "echo \"src_min 10.0.0.0\" > /proc/net/pktgen/eth1@0",
        "echo \"src_max 10.0.127.255\" > /proc/net/pktgen/eth1@0",
        "echo \"src_min 10.0.128.0\" > /proc/net/pktgen/eth1@1",
        "echo \"src_max 10.0.255.255\" > /proc/net/pktgen/eth1@1",
        "echo \"udp_src_max 1039\" > /proc/net/pktgen/eth1@1",
        "echo \"flag IPSRC_RND\" > /proc/net/pktgen/eth1@1",
        "echo \"pkt_size 60\" > /proc/net/pktgen/eth1@0",
        "echo \"start\" > /proc/net/pktgen/pgctrl",
    ] {
        assert!(want.contains(line), "missing {line:?}");
    }
}

#[test]
fn bad_options_fail_naming_the_option() {
    let base = ["-i", "eth1", "-d", "192.168.2.2", "-m", "02:00:00:00:00:01"];
    for (extra, want) in [
        (&["-H", "0"][..], "-H 0"),
        (&["-z", "60"], "-z 60"),
        (&["-p", "65530", "-P", "16"], "-p 65530"),
        (&["-s", "10.0.0.300"], "10.0.0.300"),
        (&["-F", "100000"], "-F 100000"),
        (&["-r", "fast"], "RATE=fast"),
        (&["-t", "4", "-H", "2"], "-H 2"),
    ] {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        let out = dry_run("pktgen_nat.sh", &a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("start"));
    }
    let out = dry_run("pktgen_nat.sh", &["-d", "192.168.2.2", "-m", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-i DEV"));
    let out = dry_run("counters.sh", &["-w", "5"]);
    assert_eq!(out.status.code(), Some(2));
    let out = dry_run("counters.sh", &["-i", "eth0", "-w", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("-w 0"));
}

#[test]
fn shellcheck_is_clean() {
    let scripts: Vec<String> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(scripts.len() >= 3, "{scripts:?}");
    match Command::new("shellcheck").arg("-x").args(&scripts).output() {
        Ok(out) => assert!(
            out.status.success(),
            "shellcheck:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("shellcheck not found ({e}); CI=true: .ci/run installs it");
            }
            eprintln!("SKIPPED shellcheck_is_clean: shellcheck not found ({e})");
        }
    }
}

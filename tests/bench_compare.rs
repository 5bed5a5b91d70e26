//! The comparison's smoke run (`natgw-bench compare --smoke`, bench/README.md "The
//! comparison"): natgw busy, the kernel's masquerade and the raw AF_XDP forwarder each carry
//! 1 and 1k flows of 64-byte frames for a few hundred ms, with CPU accounted and the JSON
//! and markdown results written. Keeps the tools working; the full run is not part of the
//! suite. Run under the machine-wide lock:
//! `flock /tmp/natgw-netns.lock cargo test --test bench_compare`.

use natgw_bench::compare::{self, CompareOptions, Dut};
use natgw_testbed::netns::prerequisites_with;

#[test]
fn compare_smoke_measures_natgw_kernel_and_raw_forwarder() {
    if !prerequisites_with(
        "compare_smoke_measures_natgw_kernel_and_raw_forwarder",
        &[("nft", "--version", "the `nft` command (nftables)")],
    ) {
        return;
    }
    let out = std::env::temp_dir().join(format!("natgw-compare-smoke-{}", std::process::id()));
    let mut o = CompareOptions::smoke(env!("CARGO_BIN_EXE_natgw").into());
    o.tag = "cmt".into();
    o.out_dir = Some(out.clone());
    let r = compare::run(&o).expect("compare --smoke");
    let md = r.markdown();
    eprintln!("{md}");
    assert_eq!(r.rows.len(), 3 * 2, "3 DUTs x 2 flow counts x 1 size");
    for row in &r.rows {
        let m = row.result.as_ref().unwrap_or_else(|e| {
            panic!("{} {} flows: not measured: {e}", row.dut.name(), row.flows)
        });
        let what = format!("{} {} flows: {m:?}", row.dut.name(), row.flows);
        assert!(m.sent > 1000, "the generator sent: {what}");
        // Flat out, loss is a result (debug builds of natgw lose most), not a failure; the
        // path must work and be accounted.
        assert!(m.received >= 1000, "frames reach the sink: {what}");
        assert!(m.sink_pps > 0.0 && m.received <= m.sent, "{what}");
        assert!(m.cpu.dut() > 0, "DUT CPU accounted: {what}");
        if matches!(row.dut, Dut::NatgwBusy | Dut::RawForwarder) {
            assert!(m.cpu.dut_process > 0, "own process/thread time: {what}");
        }
        assert!(m.ns_per_packet().is_finite(), "{what}");
    }
    assert!(md.contains("| 1024 | 64 | natgw-busy |"), "{md}");
    assert!(md.contains("model_name"), "{md}");
    let files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "json")),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "md")),
        "{files:?}"
    );
    let json = std::fs::read_to_string(
        files
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .unwrap(),
    )
    .unwrap();
    assert!(json.contains("\"dut_ns_per_packet\""), "{json}");
    let _ = std::fs::remove_dir_all(&out);
}

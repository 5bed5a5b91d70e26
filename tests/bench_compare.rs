//! The comparison's smoke run (`natgw-bench compare --smoke`, bench/README.md "The
//! comparison"): natgw busy, the kernel's masquerade and the raw AF_XDP forwarder each carry
//! 1 and 1k flows of 64-byte frames for a few hundred ms, with CPU accounted, a short
//! zero-loss search and the latency at half its rate at 1k flows, and the JSON, markdown and
//! PNG results written. Keeps the tools working; the full run is not part of the suite.
//! Run under the machine-wide lock:
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
    // A short zero-loss search (7 trials of 200 ms) and the latency at half its rate.
    o.zero_loss_flows = Some(1024);
    o.trial = std::time::Duration::from_millis(200);
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
    // The kernel never loses at its own pace (it forwards in the generator's softirq): it
    // has a zero-loss rate, and so a latency at half of it.
    assert_eq!(r.zero_loss.len(), 3, "one search per DUT");
    for z in &r.zero_loss {
        let z = z
            .as_ref()
            .unwrap_or_else(|(d, e)| panic!("{} zero-loss: {e}", d.name()));
        let what = format!("{} zero-loss {z:?}", z.dut.name());
        if z.rate < 2000 {
            // A debug natgw may find none; then nothing is measured at half of it.
            assert!(z.half_rate.is_none(), "{what}");
            continue;
        }
        let h = z
            .half_rate
            .as_ref()
            .expect(&what)
            .as_ref()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(h.latency.count > 0, "{what}");
        assert!(
            0 < h.latency.p50 && h.latency.p50 <= h.latency.p99 && h.latency.p99 <= h.latency.max,
            "{what}"
        );
        assert_eq!(h.latency.from_the_future, 0, "one clock: {what}");
        if z.dut != Dut::Kernel {
            assert!(z.kernel_same_rate.is_some(), "{what}");
        }
    }
    let k = r
        .zero_loss
        .iter()
        .flatten()
        .find(|z| z.dut == Dut::Kernel)
        .unwrap();
    assert!(k.rate >= 2000, "{k:?}");
    assert!(md.contains("p99 / kernel"), "{md}");
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
    assert!(json.contains("\"half_rate_latency\""), "{json}");
    // The plot: a PNG (signature, IHDR) of the expected size; its pixels are not checked.
    let png = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .unwrap_or_else(|| panic!("no PNG among {files:?}"));
    let b = std::fs::read(png).unwrap();
    assert!(b.len() > 1000, "{} bytes", b.len());
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&b[12..16], b"IHDR");
    let be = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    assert_eq!(
        (be(16), be(20)),
        (1400, 460),
        "one row (64 bytes) of two charts"
    );
    let _ = std::fs::remove_dir_all(&out);
}

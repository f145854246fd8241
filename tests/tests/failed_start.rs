//! A start that fails leaves no partial pins: a daemon that loaded (and
//! pinned) the program and then failed, here because an interface refuses
//! native XDP, removes every pin it made on a fresh pin directory; on a
//! previous daemon's pins it removes only the link it pinned itself, and
//! the next start adopts the rest.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Result, ensure};
use balancer_tests::{
    Lab, Netns, Process,
    daemon::{command, start},
    netns_test,
};
use nix::sys::signal::Signal;

/// A veth pair `va`–`vb` in `ns`: interfaces that take native XDP, unlike
/// `lo`.
fn veth(ns: &Netns) -> Result<()> {
    ns.ip(["link", "add", "va", "type", "veth", "peer", "name", "vb"])?;
    ns.ip(["link", "set", "va", "up"])?;
    ns.ip(["link", "set", "vb", "up"])?;
    Ok(())
}

/// `balancer run` in `ns` on `interfaces` and then `lo`, in native mode,
/// run until it exits (within 30 s): `lo` refuses native XDP, so it fails
/// after loading the program and attaching it to `interfaces`. Returns its
/// output after checking it failed for that reason, and after them.
fn fails_at_lo(lab: &Lab, ns: &Netns, interfaces: &[&str]) -> Result<String> {
    let mut args: Vec<&str> = interfaces
        .iter()
        .chain(&["lo"])
        .flat_map(|interface| ["--interface", interface])
        .collect();
    args.extend(["--xdp-mode", "native"]);
    let mut daemon = Process::start(command(lab, ns, args)?)?;
    let status = daemon.wait_timeout(Duration::from_secs(30))?;
    let out = daemon.output();
    ensure!(!status.success(), "the start exited with {status}:\n{out}");
    ensure!(
        out.contains("failed to start on lo")
            && out.contains("failed to attach the XDP program to lo in native mode"),
        "the reason is not given:\n{out}"
    );
    for interface in interfaces {
        ensure!(
            out.contains(&format!("attached XDP program interface=\"{interface}\"")),
            "it failed before attaching to {interface}:\n{out}"
        );
    }
    Ok(out)
}

/// The pins under `dir` by name, with the id of the map each one holds
/// (`None` for a link): the same ids mean the very same maps.
fn pins(dir: &Path) -> Result<BTreeMap<String, Option<u32>>> {
    let mut pins = BTreeMap::new();
    if !dir.exists() {
        return Ok(pins);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = if name.starts_with("link_") {
            None
        } else {
            Some(aya::maps::MapInfo::from_pin(entry.path())?.id())
        };
        pins.insert(name, id);
    }
    Ok(pins)
}

#[test]
fn a_fresh_start_that_fails_after_loading_leaves_no_pins() {
    netns_test("failed_start_fresh", Duration::from_secs(60), |lab| {
        let host = lab.netns("host")?;
        veth(&host)?;
        let dir = lab.pin_dir()?;
        ensure!(!dir.exists(), "{} exists before the start", dir.display());

        // The maps are pinned and `va` takes the program natively (its link
        // pinned too) before `lo` refuses native mode.
        let out = fails_at_lo(lab, &host, &["va"])?;
        ensure!(
            !dir.exists(),
            "the failed start left {}: {:?}",
            dir.display(),
            pins(&dir)?
        );
        ensure!(
            host.xdp_attachment("va")?.is_none(),
            "the failed start left the program on va"
        );
        ensure!(host.xdp_attachment("lo")?.is_none());
        ensure!(
            out.contains("the start failed: removed the pins it created"),
            "{out}"
        );
        Ok(())
    });
}

#[test]
fn a_failed_start_on_adopted_pins_keeps_them_and_the_next_start_adopts_them() {
    netns_test("failed_start_adopted", Duration::from_secs(90), |lab| {
        let host = lab.netns("host")?;
        veth(&host)?;
        let dir = lab.pin_dir()?;
        let mut first = start(lab, &host, ["--interface", "va", "--xdp-mode", "generic"])?;
        first.signal(Signal::SIGTERM)?;
        let status = first.wait_timeout(Duration::from_secs(10))?;
        ensure!(status.success(), "{status}:\n{}", first.output());
        let before = pins(&dir)?;
        ensure!(
            before.contains_key("link_va") && before.len() > 1,
            "{before:?}"
        );

        // `va` is adopted, `vb` takes the program natively (its link pinned
        // by this start), then `lo` refuses native mode.
        let out = fails_at_lo(lab, &host, &["va", "vb"])?;
        ensure!(out.contains("adopted the pinned maps"), "{out}");
        let after = pins(&dir)?;
        ensure!(
            after == before,
            "the pins changed: {before:?} then {after:?}"
        );
        ensure!(
            host.xdp_attachment("va")?.as_deref() == Some("xdpgeneric"),
            "the adopted link of va went"
        );
        ensure!(
            host.xdp_attachment("vb")?.is_none(),
            "the failed start left the program on vb"
        );
        ensure!(
            out.contains("removed the pins it added, left the adopted ones forwarding"),
            "{out}"
        );

        // Failing again with nothing newly attached, it removes nothing.
        let out = fails_at_lo(lab, &host, &["va"])?;
        ensure!(
            pins(&dir)? == before,
            "the second failed start changed the pins"
        );
        ensure!(
            out.contains("the start failed: left the adopted pins as they were"),
            "{out}"
        );

        let next = start(lab, &host, ["--interface", "va", "--xdp-mode", "generic"])?;
        ensure!(
            next.output().contains("adopted the pinned maps")
                && next.output().contains("mode=adopted"),
            "{}",
            next.output()
        );
        ensure!(pins(&dir)? == before, "the next start changed the pins");
        Ok(())
    });
}

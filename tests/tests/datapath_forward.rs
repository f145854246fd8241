//! Forwarding in the XDP program, through BPF_PROG_TEST_RUN: a backend
//! whose MAC is unknown, and backends behind another interface (a
//! redirect) or behind the one the frame came in on (XDP_TX). Tables of
//! cases of `balancer_tests::case`.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use balancer::datapath::action::{DROP, REDIRECT, TX};
use balancer_common::{proto, stats::Stat};
use balancer_tests::{
    case::{Case, Counter, Out, check, run},
    fixture::{
        Vip,
        standard::{CLIENT4, backends4, standard},
    },
    packet::Packet,
};

#[test]
fn an_unresolved_backend_is_dropped_and_counted_never_sent() {
    let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 40));
    let frame = Packet::tcp(CLIENT4, 1, vip, 80).build();
    let no_neighbour = (Counter::Stat(Stat::DROP_NO_NEIGHBOUR), 1);
    let cases = [Case::new(
        "unresolved",
        frame,
        DROP,
        Out::Same,
        &[no_neighbour],
    )];
    let fixture = || {
        let mut f = standard()?;
        let mut backends = backends4(70..71);
        backends[0].resolved = false;
        f.put_vip(Vip::new(6, vip, 80, proto::TCP, backends))?;
        Ok(f)
    };
    check("datapath_unresolved", fixture, &cases);
}

#[test]
fn a_backend_behind_another_interface_is_reached_by_redirect() {
    balancer_tests::netns_test(
        "datapath_redirect",
        std::time::Duration::from_secs(60),
        |lab| {
            let ns = lab.netns("lb")?;
            let peer = lab.netns("peer")?;
            lab.veth((&ns, "in0"), (&peer, "p0"), Default::default())?;
            lab.veth((&ns, "out0"), (&peer, "p1"), Default::default())?;
            ns.run(|| -> Result<()> {
                let ingress = nix::net::if_::if_nametoindex("in0")?;
                let egress = nix::net::if_::if_nametoindex("out0")?;
                let mut f = standard()?;
                f.datapath.add_egress(egress)?;
                let mut behind_egress = backends4(80..81);
                behind_egress[0].ifindex = egress;
                let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 50));
                f.put_vip(Vip::new(7, vip, 80, proto::TCP, behind_egress))?;
                let mut behind_ingress = backends4(81..82);
                behind_ingress[0].ifindex = ingress;
                let vip2 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 51));
                f.put_vip(Vip::new(8, vip2, 80, proto::TCP, behind_ingress))?;
                let redirect = (Counter::Stat(Stat::REDIRECT), 1);
                let to = |vip| Packet::tcp(CLIENT4, 1, vip, 80).build();
                let cases = [
                    Case::new("redirect", to(vip), REDIRECT, Out::Backend(80), &[redirect])
                        .on(ingress),
                    // Through the ingress interface itself: XDP_TX.
                    Case::new("same interface", to(vip2), TX, Out::Backend(81), &[]).on(ingress),
                ];
                run(&mut f, &cases)?;
                Ok(())
            })?
        },
    );
}

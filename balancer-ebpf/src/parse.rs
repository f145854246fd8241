//! Bounds-checked packet parsing.
//!
//! Every read of packet memory goes through [`Cursor::header`], which checks
//! the whole header against `data_end` once, before any field is read.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use network_types::{
    eth::{EthHdr, EtherType},
    vlan::VlanHdr,
};

/// The packet ends before a header it claims to carry.
pub struct Malformed;

/// Network protocol carried by an Ethernet frame.
pub enum L3 {
    Ipv4,
    Ipv6,
    Other,
}

/// A read position inside the packet, never past `data_end`.
pub struct Cursor {
    pos: usize,
    end: usize,
}

impl Cursor {
    /// A cursor at the first byte of the frame.
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Cursor {
            pos: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Returns a pointer to a `T` at the cursor and moves past it, or
    /// [`Malformed`] when the packet is too short to hold it.
    #[inline(always)]
    pub fn header<T>(&mut self) -> Result<*const T, Malformed> {
        let start = self.pos;
        let next = start + size_of::<T>();
        if next > self.end {
            return Err(Malformed);
        }
        self.pos = next;
        Ok(start as *const T)
    }

    /// Parses the Ethernet header and at most one 802.1Q tag, and returns
    /// the protocol that follows, with the cursor on its first byte.
    #[inline(always)]
    pub fn ethernet(&mut self) -> Result<L3, Malformed> {
        let eth = self.header::<EthHdr>()?;
        // SAFETY: `header` checked that the whole header is inside the packet.
        let mut ether_type = unsafe { (*eth).ether_type };
        if ether_type == EtherType::Ieee8021q as u16 {
            let vlan = self.header::<VlanHdr>()?;
            // SAFETY: as above.
            ether_type = unsafe { (*vlan).ether_type };
        }
        Ok(if ether_type == EtherType::Ipv4 as u16 {
            L3::Ipv4
        } else if ether_type == EtherType::Ipv6 as u16 {
            L3::Ipv6
        } else {
            L3::Other
        })
    }
}

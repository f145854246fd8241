//! What every program of this crate needs as a BPF object: a panic handler
//! (never called) and the license section. Each binary includes it with
//! `mod runtime;`.

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so
    // this is never called in a loaded program.
    unsafe { core::hint::unreachable_unchecked() }
}

/// The kernel only lets GPL-compatible programs call GPL helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

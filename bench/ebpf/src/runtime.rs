//! The parts of a BPF object that every program of this crate needs: the
//! license section and a panic handler. Each binary includes it with
//! `mod runtime;`.

/// GPL-compatible, so that the programs may call GPL-only helpers.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Never called: the verifier refuses a program that could reach a panic.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: unreachable in a loaded program (see above).
    unsafe { core::hint::unreachable_unchecked() }
}

//! ethtool's ioctls (SIOCETHTOOL) on a socket of the calling thread's
//! network namespace: a device's driver and its transmit checksum
//! offload, as `ethtool -i` and `ethtool -k` show them.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `SIOCETHTOOL`.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_GDRVINFO`.
const ETHTOOL_GDRVINFO: u32 = 0x03;
/// `ETHTOOL_GTXCSUM`: whether any transmit checksum offload is on.
const ETHTOOL_GTXCSUM: u32 = 0x16;

/// `struct ifreq` with its `ifr_data` member.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    /// The rest of the union (24 bytes in all).
    _pad: [u8; 16],
}

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ethtool_value`.
#[repr(C)]
struct Value {
    cmd: u32,
    data: u32,
}

/// Runs the ethtool command in `data` (whose first field is the command)
/// on `interface`.
fn ethtool<T>(interface: &str, data: &mut T) -> io::Result<()> {
    let bytes = interface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {interface:?} is too long"),
        ));
    }
    // SAFETY: socket(2) has no preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned, owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: (data as *mut T).cast(),
        _pad: [0; 16],
    };
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: SIOCETHTOOL reads the request, and reads and writes the
    // command structure it points to, which outlives the call.
    let done = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request) };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The driver of `interface` (`veth`, `mlx5_core`, ...).
pub fn driver(interface: &str) -> io::Result<String> {
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    ethtool(interface, &mut info)?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Whether `interface` offloads transmit checksums (`tx-checksumming`).
pub fn tx_checksum(interface: &str) -> io::Result<bool> {
    let mut value = Value {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    ethtool(interface, &mut value)?;
    Ok(value.data != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structures_have_the_kernels_sizes() {
        assert_eq!(size_of::<IfReq>(), 40);
        assert_eq!(size_of::<DrvInfo>(), 196);
    }

    #[test]
    fn loopback_is_read_and_a_missing_device_is_an_error() {
        // Every network namespace has lo; its driver reports no name
        // through this ioctl but answers it.
        assert!(tx_checksum("lo").is_ok());
        let missing = driver("nosuchdev0").unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENODEV), "{missing}");
        assert!(driver("an-interface-name-too-long").is_err());
    }
}

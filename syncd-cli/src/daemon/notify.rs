//! systemd readiness notification (`sd_notify`): one datagram per message
//! to `$NOTIFY_SOCKET`, when it is set. Without systemd this does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends `READY=1`, `STOPPING=1`, `WATCHDOG=1` or `STATUS=…`; errors are
/// logged and otherwise ignored (a missing supervisor is not our failure).
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let text = path.to_string_lossy();
        if let Some(name) = text.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(message.as_bytes(), &addr)
        } else {
            sock.send_to(message.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The watchdog interval systemd asks for, halved, in milliseconds.
pub fn watchdog_interval_ms() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then_some((usec / 2_000).max(1))
}

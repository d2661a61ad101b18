//! Which surfaces (TurtleTerm, Workspace, agents) call the daemon: each
//! request's `X-Syncd-Surface` header is checked as a `SurfaceVersion` and
//! counted, so that status can say who is using this daemon. Bounded: at
//! most `MAX_SURFACES` are listed; requests of any further ones are
//! counted together.

use std::collections::BTreeMap;
use std::sync::Mutex;

use sourceos_syncd as core;

/// Surfaces listed at most.
pub const MAX_SURFACES: usize = 32;

#[derive(Default)]
struct Seen {
    by_surface: BTreeMap<String, (u64, core::Timestamp)>,
    not_listed: u64,
}

/// The surfaces seen since the daemon started.
#[derive(Default)]
pub struct Surfaces(Mutex<Seen>);

impl Surfaces {
    /// Counts one request of `surface` at `at`.
    pub fn note(&self, surface: &core::SurfaceVersion, at: core::Timestamp) {
        // A poisoned tally only loses counts; requests are never refused
        // for it.
        let Ok(mut seen) = self.0.lock() else { return };
        let listed = seen.by_surface.len();
        match seen.by_surface.get_mut(surface.as_str()) {
            Some((n, last)) => {
                *n += 1;
                *last = at;
            }
            None if listed < MAX_SURFACES => {
                seen.by_surface.insert(surface.as_str().to_owned(), (1, at));
            }
            None => seen.not_listed += 1,
        }
    }

    /// The surfaces, most requests first (then by name), and the requests
    /// of those not listed.
    pub fn view(&self) -> (Vec<core::SurfaceSeen>, u64) {
        let Ok(seen) = self.0.lock() else {
            return (Vec::new(), 0);
        };
        let mut list: Vec<core::SurfaceSeen> = seen
            .by_surface
            .iter()
            .map(|(s, (n, at))| core::SurfaceSeen {
                surface: s.clone(),
                requests: *n,
                last_seen_at: at.to_string(),
            })
            .collect();
        list.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.surface.cmp(&b.surface)));
        (list, seen.not_listed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn surface(s: &str) -> core::SurfaceVersion {
        core::SurfaceVersion::new(s).unwrap()
    }

    #[test]
    fn counted_ordered_and_bounded() {
        let t = |s: i64| core::Timestamp::from_unix_micros(1_700_000_000_000_000 + s * 1_000_000);
        let tally = Surfaces::default();
        tally.note(&surface("workspace/1.0"), t(1));
        tally.note(&surface("turtleterm/0.4.1"), t(2));
        tally.note(&surface("turtleterm/0.4.1"), t(3));
        let (list, not_listed) = tally.view();
        assert_eq!(not_listed, 0);
        let names: Vec<(&str, u64)> = list
            .iter()
            .map(|s| (s.surface.as_str(), s.requests))
            .collect();
        assert_eq!(names, vec![("turtleterm/0.4.1", 2), ("workspace/1.0", 1)]);
        assert_eq!(list[0].last_seen_at, t(3).to_string());
        for i in 0..MAX_SURFACES + 5 {
            tally.note(&surface(&format!("agent-{i}/1")), t(4));
        }
        let (list, not_listed) = tally.view();
        assert_eq!(list.len(), MAX_SURFACES);
        assert_eq!(not_listed, 7);
        // A listed one still counts.
        tally.note(&surface("workspace/1.0"), t(5));
        assert_eq!(tally.view().1, 7);
    }
}

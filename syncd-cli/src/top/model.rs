//! What `syncd top` shows, kept apart from drawing and from the terminal
//! so that it can be tested: the latest status document, the recent
//! events from the stream, the last event id (to resume after a daemon
//! restart), the connection and the focused panel.

use std::collections::VecDeque;

use serde_json::Value;
use sourceos_syncd as core;

/// Recent events kept.
pub const MAX_RECENT_EVENTS: usize = 200;

/// The dashboard's panels, in focus order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    /// Health and the status summary.
    Health,
    /// The daemon's lifecycle state.
    Lifecycle,
    /// Lanes and their pressure.
    Lanes,
    /// Replication peers.
    Peers,
    /// Conflicts.
    Conflicts,
    /// Orphan events.
    Orphans,
    /// Recent events.
    Events,
}

impl Panel {
    /// Every panel, in focus order.
    pub const ALL: [Panel; 7] = [
        Panel::Health,
        Panel::Lifecycle,
        Panel::Lanes,
        Panel::Peers,
        Panel::Conflicts,
        Panel::Orphans,
        Panel::Events,
    ];

    /// The panel's title.
    pub fn title(self) -> &'static str {
        match self {
            Panel::Health => "Health",
            Panel::Lifecycle => "Lifecycle",
            Panel::Lanes => "Lanes",
            Panel::Peers => "Peers",
            Panel::Conflicts => "Conflicts",
            Panel::Orphans => "Orphans",
            Panel::Events => "Recent events",
        }
    }

    fn index(self) -> usize {
        Panel::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// Whether the stream is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Reading the stream.
    Connected,
    /// The daemon does not answer; retrying.
    Reconnecting(String),
}

/// One event as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Its sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: String,
    /// Its actor.
    pub actor: String,
    /// Its subject, or `-`.
    pub subject: String,
}

/// A key the dashboard understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// Focus the next panel.
    Next,
    /// Focus the previous panel.
    Previous,
    /// Scroll the focused list up.
    Up,
    /// Scroll it down.
    Down,
    /// Leave.
    Quit,
}

/// The dashboard's state.
pub struct Dashboard {
    /// The latest status document.
    pub status: Option<core::StatusDocument>,
    /// Recent events, newest last.
    pub events: VecDeque<EventRow>,
    /// The last event id seen (sent as `Last-Event-ID` on reconnect).
    pub last_event_id: Option<u64>,
    /// The connection.
    pub link: Link,
    /// The focused panel.
    pub focus: Panel,
    /// Lines scrolled up from the newest event.
    pub scroll: usize,
    /// Set when the user asked to leave.
    pub quit: bool,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self {
            status: None,
            events: VecDeque::with_capacity(MAX_RECENT_EVENTS),
            last_event_id: None,
            link: Link::Reconnecting("connecting".into()),
            focus: Panel::Health,
            scroll: 0,
            quit: false,
        }
    }
}

impl Dashboard {
    /// Takes one event from the stream (its `id` and `data`).
    pub fn event(&mut self, id: u64, data: &Value) {
        // A resumed stream never repeats, but a duplicate frame must not
        // show twice either.
        if self.last_event_id.is_some_and(|last| id <= last) {
            return;
        }
        let text = |k: &str| {
            data.get(k)
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_owned()
        };
        if self.events.len() >= MAX_RECENT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(EventRow {
            seq: id,
            kind: text("kind"),
            actor: text("actor"),
            subject: text("subject"),
        });
        self.last_event_id = Some(id);
    }

    /// Handles a key.
    pub fn key(&mut self, k: Key) {
        let n = Panel::ALL.len();
        let i = self.focus.index();
        match k {
            Key::Next => {
                self.focus = Panel::ALL
                    .get((i + 1) % n)
                    .copied()
                    .unwrap_or(Panel::Health);
            }
            Key::Previous => {
                self.focus = Panel::ALL
                    .get((i + n - 1) % n)
                    .copied()
                    .unwrap_or(Panel::Health);
            }
            Key::Up if self.focus == Panel::Events => {
                self.scroll = (self.scroll + 1).min(self.events.len().saturating_sub(1));
            }
            Key::Down if self.focus == Panel::Events => {
                self.scroll = self.scroll.saturating_sub(1);
            }
            Key::Up | Key::Down => {}
            Key::Quit => self.quit = true,
        }
    }
}

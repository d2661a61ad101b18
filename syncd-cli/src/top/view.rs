//! Drawing the dashboard: three rows of panels and a footer. Only what
//! the status document and the stream say is shown; what neither exposes
//! reads `n/a` (lane pressure: when the status has no `lanes` block).

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;

use super::model::{Dashboard, Link, Panel};

fn block(d: &Dashboard, p: Panel) -> Block<'static> {
    let b = Block::default().borders(Borders::ALL).title(p.title());
    if d.focus == p {
        b.border_style(Style::default().add_modifier(Modifier::BOLD))
            .title_style(Style::default().add_modifier(Modifier::REVERSED))
    } else {
        b
    }
}

fn na() -> Vec<Line<'static>> {
    vec![Line::from("n/a")]
}

fn lines(d: &Dashboard, p: Panel) -> Vec<Line<'static>> {
    let Some(s) = &d.status else {
        return match p {
            Panel::Events => Vec::new(),
            _ => vec![Line::from("waiting for the daemon")],
        };
    };
    match p {
        Panel::Health => vec![
            Line::from(format!("health {}", s.health.as_str())),
            Line::from(format!("{} · {}", s.active_profile, s.active_device)),
            Line::from(format!("head {}", s.log.head_seq)),
        ],
        Panel::Lifecycle => match &s.daemon {
            Some(x) => vec![
                Line::from(format!("state {}", x.state)),
                Line::from(format!("upstream {}", x.upstream_state)),
                Line::from(x.reason.clone().unwrap_or_default()),
            ],
            None => vec![Line::from(format!("daemon {}", s.daemon_state))],
        },
        Panel::Lanes => match &s.daemon {
            Some(x) => {
                let mut v: Vec<Line<'static>> = ["ingest_lanes", "receipt_flushing"]
                    .iter()
                    .map(|l| {
                        let state = if x.started_subsystems.iter().any(|s| s == l) {
                            "started".to_owned()
                        } else if let Some(g) = x.blocked_subsystems.get(*l) {
                            format!("blocked, needs {g}")
                        } else {
                            "not started".to_owned()
                        };
                        Line::from(format!("{l} {state}"))
                    })
                    .collect();
                match &s.lanes {
                    // Three rows: the lanes' state, their depths, and what
                    // pressure has cost so far.
                    Some(l) => {
                        v.truncate(1);
                        let depths: Vec<String> = l
                            .lanes
                            .iter()
                            .map(|x| {
                                format!(
                                    "{} {}/{}",
                                    x.lane.as_str(),
                                    x.depth_events,
                                    x.capacity_events
                                )
                            })
                            .collect();
                        v.push(Line::from(depths.join("  ")));
                        let shed: u64 = l.lanes.iter().map(|x| x.counters.shed_events).sum();
                        let deferred: u64 =
                            l.lanes.iter().map(|x| x.counters.deferred_events).sum();
                        v.push(Line::from(format!(
                            "shed {shed} deferred {deferred}{}",
                            if l.shedding { " (shedding now)" } else { "" }
                        )));
                    }
                    None => v.push(Line::from("pressure n/a")),
                }
                v
            }
            None => na(),
        },
        Panel::Peers => match &s.replication {
            Some(r) => vec![
                Line::from(format!("peers {} (stale {})", r.peers, r.stale_peers)),
                Line::from(format!("max lag {}", r.max_lag)),
                Line::from(if r.reached_server {
                    "server reached".to_owned()
                } else {
                    "offline, local only".to_owned()
                }),
            ],
            None => vec![Line::from("no replication pass yet")],
        },
        Panel::Conflicts => vec![
            Line::from(format!("open {}", s.conflict_count)),
            Line::from(format!("policy-held objects {}", s.policy_blocked_objects)),
        ],
        Panel::Orphans => match &s.sessions {
            Some(x) => vec![
                Line::from(format!("queued {}", x.totals.orphans_queued)),
                Line::from(format!("recovered {}", x.totals.orphans_recovered)),
                Line::from(format!("quarantined {}", x.totals.orphans_quarantined)),
            ],
            None => na(),
        },
        Panel::Events => Vec::new(),
    }
}

fn events(d: &Dashboard, height: u16) -> Vec<Line<'static>> {
    let rows = usize::from(height.saturating_sub(2));
    let end = d.events.len().saturating_sub(d.scroll);
    let start = end.saturating_sub(rows);
    d.events
        .iter()
        .skip(start)
        .take(end - start)
        .map(|e| {
            Line::from(format!(
                "{:>8}  {:<28} {:<22} {}",
                e.seq, e.kind, e.actor, e.subject
            ))
        })
        .collect()
}

fn row(area: Rect) -> Vec<Rect> {
    Layout::default()
        .direction(Direction::Horizontal)
        .constraints([
            Constraint::Ratio(1, 3),
            Constraint::Ratio(1, 3),
            Constraint::Ratio(1, 3),
        ])
        .split(area)
        .to_vec()
}

/// Draws the dashboard into `f`.
pub fn draw(f: &mut Frame<'_>, d: &Dashboard) {
    let outer = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .split(f.area());
    let mut areas: Vec<(Panel, Rect)> = Vec::new();
    if let (Some(top), Some(mid)) = (outer.first(), outer.get(1)) {
        for (p, a) in [Panel::Health, Panel::Lifecycle, Panel::Lanes]
            .into_iter()
            .zip(row(*top))
        {
            areas.push((p, a));
        }
        for (p, a) in [Panel::Peers, Panel::Conflicts, Panel::Orphans]
            .into_iter()
            .zip(row(*mid))
        {
            areas.push((p, a));
        }
    }
    for (p, a) in areas {
        f.render_widget(Paragraph::new(lines(d, p)).block(block(d, p)), a);
    }
    if let Some(a) = outer.get(2) {
        f.render_widget(
            Paragraph::new(events(d, a.height)).block(block(d, Panel::Events)),
            *a,
        );
    }
    if let Some(a) = outer.get(3) {
        let link = match &d.link {
            Link::Connected => "live".to_owned(),
            Link::Reconnecting(why) => format!("reconnecting: {why}"),
        };
        let footer = format!("tab/shift-tab panels · ↑/↓ scroll events · q quit · {link}");
        f.render_widget(Paragraph::new(footer), *a);
    }
}

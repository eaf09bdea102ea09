//! Drawing one frame: the header with the cluster's totals, the servers' table (or the
//! detail, why or help view), the log pane, the footer with the keys.
//!
//! Narrow terminals keep the columns that matter most: they are dropped in the order of
//! `COLUMNS`' ranks (models first, then capacity, KV cache, running ...), never the server
//! and its state. Only the rows on screen are built, so a frame's work does not grow with
//! a thousand servers past the sort.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Sparkline, Table, Wrap,
};
use ratatui::Frame;

use super::board::{Board, Health, Row};
use super::ui::{order, Screen, Ui};
use crate::decisions::Decision;

/// Everything a frame shows.
pub struct Scene<'a> {
    pub address: &'a str,
    pub policy: &'a str,
    pub board: &'a Board,
    pub ui: &'a Ui,
    pub decisions: &'a VecDeque<Decision>,
    /// The log pane's lines, oldest first (empty unless the pane is open).
    pub log: &'a [String],
    /// Requests being answered (shown while draining).
    pub active: usize,
}

/// A column of the servers' table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Server,
    State,
    Load,
    InFlight,
    Running,
    Waiting,
    Capacity,
    Kv,
    Rate,
    Errors,
    Ttft,
    Models,
}

/// (column, title, width, drop rank): the higher the rank, the sooner it goes on a narrow
/// screen; 0 never goes. Server and models take the width left over.
const COLUMNS: [(Col, &str, u16, u8); 12] = [
    (Col::Server, "SERVER", 20, 0),
    (Col::State, "STATE", 7, 0),
    (Col::Load, "LOAD", 13, 2),
    (Col::InFlight, "INFL", 5, 4),
    (Col::Running, "RUN", 5, 8),
    (Col::Waiting, "WAIT", 5, 6),
    (Col::Capacity, "CAP", 5, 10),
    (Col::Kv, "KV", 5, 9),
    (Col::Rate, "REQ/S", 7, 3),
    (Col::Errors, "ERR", 6, 7),
    (Col::Ttft, "TTFT50", 8, 5),
    (Col::Models, "MODELS", 12, 11),
];

/// The columns that fit in `width`, in display order, with their widths (server and models
/// share what is left over).
pub fn columns(width: u16) -> Vec<(Col, &'static str, u16)> {
    let mut kept: Vec<(Col, &str, u16, u8)> = COLUMNS.to_vec();
    let needed =
        |cols: &[(Col, &str, u16, u8)]| cols.iter().map(|c| c.2 + 1).sum::<u16>().saturating_sub(1);
    while needed(&kept) > width {
        let Some(at) = kept
            .iter()
            .enumerate()
            .filter(|(_, c)| c.3 > 0)
            .max_by_key(|(_, c)| c.3)
            .map(|(i, _)| i)
        else {
            break;
        };
        kept.remove(at);
    }
    // Too narrow even for the server and its state: the server's column gives way.
    let over = needed(&kept).saturating_sub(width);
    kept[0].2 = kept[0].2.saturating_sub(over).max(4);
    let spare = width.saturating_sub(needed(&kept));
    let has_models = kept.iter().any(|c| c.0 == Col::Models);
    kept.iter()
        .map(|&(col, title, w, _)| {
            let extra = match (col, has_models) {
                (Col::Server, true) => spare / 2,
                (Col::Server, false) => spare,
                (Col::Models, _) => spare - spare / 2,
                _ => 0,
            };
            (col, title, w + extra)
        })
        .collect()
}

/// Draws the whole frame.
pub fn draw(frame: &mut Frame, scene: &Scene) {
    let area = frame.area();
    let log_height = if scene.ui.log_pane {
        (area.height / 3).clamp(3, 12)
    } else {
        0
    };
    let header_height = if scene.board.clients.is_empty() { 2 } else { 3 };
    let [header, body, log, footer] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Min(1),
        Constraint::Length(log_height),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, scene);
    match scene.ui.screen {
        Screen::Table | Screen::Help => draw_table(frame, body, scene),
        Screen::Detail => draw_detail(frame, body, scene),
        Screen::Why => draw_why(frame, body, scene),
    }
    if scene.ui.log_pane {
        draw_log(frame, log, scene);
    }
    draw_footer(frame, footer, scene);
    if scene.ui.screen == Screen::Help {
        draw_help(frame, body);
    }
}

fn draw_header(frame: &mut Frame, area: Rect, scene: &Scene) {
    let t = &scene.board.totals;
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let servers_style = if t.healthy < t.servers {
        bold.fg(Color::Red)
    } else {
        bold.fg(Color::Green)
    };
    let first = Line::from(vec![
        Span::styled("mvllm", bold.fg(Color::Cyan)),
        Span::raw(format!("  http://{}", scene.address)),
        Span::raw(format!(
            "  policy {}  sort {}",
            scene.policy,
            scene.ui.sort.name()
        )),
    ]);
    let second = Line::from(vec![
        Span::styled(
            format!("servers {}/{} up", t.healthy, t.servers),
            servers_style,
        ),
        Span::raw(format!(
            " · {:.1} req/s · {:.0} tok/s · in flight {}",
            t.requests_per_s, t.tokens_per_s, t.in_flight
        )),
        Span::styled(
            format!(" · errors {}", t.errors),
            if t.errors > 0 {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            },
        ),
        Span::raw(format!(" · retries {}", t.retries)),
    ]);
    let mut lines = vec![first, second];
    if !scene.board.clients.is_empty() {
        let clients: Vec<String> = scene
            .board
            .clients
            .iter()
            .map(|c| {
                format!(
                    "{} {} in flight, {} req, {} refused, {} tok",
                    c.name, c.in_flight, c.requests, c.refused, c.tokens
                )
            })
            .collect();
        lines.push(Line::from(format!("clients: {}", clients.join(" · "))));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

fn health_style(health: Health) -> Style {
    match health {
        Health::Up => Style::new().fg(Color::Green),
        Health::Down => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Health::Ejected => Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        Health::New => Style::new().fg(Color::DarkGray),
    }
}

/// `text` in at most `width` characters, cut in the middle (both ends of a URL say most).
fn fit(text: &str, width: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= width {
        return text.to_string();
    }
    if width <= 1 {
        return "…".chars().take(width).collect();
    }
    let head = (width - 1) / 2;
    let tail = width - 1 - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

fn short_url(url: &str) -> &str {
    url.strip_prefix("http://").unwrap_or(url)
}

fn bar(ratio: f64, width: usize) -> String {
    let filled = ((ratio.clamp(0.0, 1.0)) * width as f64).round() as usize;
    let mut s = "█".repeat(filled);
    s.push_str(&"░".repeat(width - filled));
    s
}

fn seconds(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{s:.1}s"),
    }
}

fn cell(row: &Row, col: Col, width: u16) -> Cell<'static> {
    let v = &row.view;
    let text = match col {
        Col::Server => fit(short_url(&v.url), width as usize),
        Col::State => {
            return Cell::from(row.health.word()).style(health_style(row.health));
        }
        Col::Load => {
            let style = match v.utilization {
                u if u >= 1.0 => Style::new().fg(Color::Red),
                u if u >= 0.8 => Style::new().fg(Color::Yellow),
                _ => Style::new().fg(Color::Green),
            };
            let text = format!(
                "{} {:>3.0}%",
                bar(v.utilization, 8),
                (v.utilization * 100.0).min(999.0)
            );
            return Cell::from(text).style(style);
        }
        Col::InFlight => v.in_flight.to_string(),
        Col::Running => format!("{:.0}", v.running),
        Col::Waiting => format!("{:.0}", v.waiting),
        Col::Capacity => v.capacity.to_string(),
        Col::Kv => v
            .kv_cache_usage
            .map_or("-".into(), |k| format!("{:.0}%", k * 100.0)),
        Col::Rate => format!("{:.1}", row.requests_per_s),
        Col::Errors => v.totals.errors.to_string(),
        Col::Ttft => seconds(row.ttft_p50),
        Col::Models => fit(&v.models.join(","), width as usize),
    };
    Cell::from(text)
}

fn draw_table(frame: &mut Frame, area: Rect, scene: &Scene) {
    let cols = columns(area.width);
    let rows = &scene.board.rows;
    let order = order(rows, scene.ui.sort);
    let selected = scene.ui.selected_position(rows, &order);
    // Only the rows that fit are built: scrolled so that the selected one shows.
    let visible = area.height.saturating_sub(1).max(1) as usize;
    let first = selected.map_or(0, |s| (s + 1).saturating_sub(visible));
    let table_rows = order
        .iter()
        .enumerate()
        .skip(first)
        .take(visible)
        .map(|(position, &i)| {
            let row = &rows[i];
            let mut style = match row.health {
                Health::Up => Style::new(),
                other => health_style(other),
            };
            if Some(position) == selected {
                style = style.add_modifier(Modifier::REVERSED);
            }
            TableRow::new(cols.iter().map(|&(col, _, w)| cell(row, col, w))).style(style)
        });
    let header = TableRow::new(cols.iter().map(|&(_, title, _)| title))
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let widths = cols.iter().map(|&(_, _, w)| Constraint::Length(w));
    let table = Table::new(table_rows, widths)
        .header(header)
        .column_spacing(1);
    frame.render_widget(table, area);
    if rows.is_empty() {
        let note = Paragraph::new("no servers in servers.toml");
        frame.render_widget(
            note,
            Rect {
                y: area.y + 1,
                height: 1,
                ..area
            },
        );
    }
}

/// Seconds (or minutes) since a Unix time in milliseconds.
fn age(unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(unix_ms) as f64 / 1000.0;
    if secs < 120.0 {
        format!("{secs:.1} s ago")
    } else {
        format!("{:.0} min ago", secs / 60.0)
    }
}

fn draw_detail(frame: &mut Frame, area: Rect, scene: &Scene) {
    let rows = &scene.board.rows;
    let Some(row) = scene
        .ui
        .selected
        .as_deref()
        .and_then(|url| rows.iter().find(|r| r.view.url == url))
    else {
        frame.render_widget(Paragraph::new("that server is gone (Esc goes back)"), area);
        return;
    };
    let v = &row.view;
    let label = |name: &str| Span::styled(format!("{name:<16}"), Style::new().fg(Color::Cyan));
    let mut lines = vec![
        Line::from(vec![
            label("server"),
            Span::styled(v.url.clone(), Style::new().add_modifier(Modifier::BOLD)),
        ]),
        Line::from(vec![
            label("state"),
            Span::styled(row.health.word(), health_style(row.health)),
            Span::raw(match v.ejected_for {
                Some(left) => format!(" for {:.1} s more", left.as_secs_f64()),
                None => String::new(),
            }),
        ]),
        Line::from(vec![label("models"), Span::raw(v.models.join(", "))]),
        Line::from(vec![
            label("load"),
            Span::raw(format!(
                "{:.0}% of {} · running {:.0} · waiting {:.0} · in flight {}",
                v.utilization * 100.0,
                v.capacity,
                v.running,
                v.waiting,
                v.in_flight,
            )),
        ]),
        Line::from(vec![
            label("KV cache"),
            Span::raw(
                v.kv_cache_usage
                    .map_or("-".into(), |k| format!("{:.0}% in use", k * 100.0)),
            ),
        ]),
        Line::from(vec![
            label("traffic"),
            Span::raw(format!(
                "{:.1} req/s · TTFT p50 {} · {} requests · {} per token",
                row.requests_per_s,
                seconds(row.ttft_p50),
                v.totals.requests,
                seconds(v.seconds_per_token),
            )),
        ]),
        Line::from(vec![
            label("failures"),
            Span::raw(format!(
                "{} errors · {} retries away · {} ejections · {} in a row",
                v.totals.errors, v.totals.retries, v.ejections, v.consecutive_failures
            )),
        ]),
        Line::from(vec![
            label("last scrape"),
            Span::raw(v.last_check_ms.map_or("never".into(), age)),
        ]),
        Line::from(vec![
            label("last error"),
            Span::styled(
                v.last_error.clone().unwrap_or_else(|| "none".into()),
                if v.last_error.is_some() {
                    Style::new().fg(Color::Red)
                } else {
                    Style::new()
                },
            ),
        ]),
    ];
    lines.push(Line::raw(""));
    let [text, ttft, load] = Layout::vertical([
        Constraint::Length(lines.len() as u16),
        Constraint::Min(3),
        Constraint::Min(3),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(lines), text);
    let mut spark = |title: String, data: &[u64], max: u64, color: Color, area: Rect| {
        let shown = &data[data.len().saturating_sub(area.width as usize)..];
        let sparkline = Sparkline::default()
            .block(Block::new().borders(Borders::TOP).title(title))
            .data(shown)
            .max(max.max(1))
            .style(Style::new().fg(color));
        frame.render_widget(sparkline, area);
    };
    let ttft_max = row.ttft_history.iter().max().copied().unwrap_or(0);
    spark(
        format!(" time to first token, one bar a second (max {ttft_max} ms) "),
        &row.ttft_history,
        ttft_max,
        Color::Magenta,
        ttft,
    );
    spark(
        " load, % of capacity (full height: 100 %) ".to_string(),
        &row.load_history,
        100,
        Color::Green,
        load,
    );
}

fn clock(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
}

/// The lines of one decision in the why view.
pub fn decision_lines(d: &Decision) -> Vec<Line<'static>> {
    let chosen = d.attempts.last().map_or("no server".to_string(), |a| {
        short_url(&a.server).to_string()
    });
    let status = d.status.map_or("-".into(), |s| s.to_string());
    let ok = d.outcome == "ok";
    let mut lines = vec![Line::from(vec![
        Span::styled(clock(d.at), Style::new().fg(Color::DarkGray)),
        Span::raw(format!(" {} ", d.id)),
        Span::styled(
            if d.model.is_empty() {
                "-".into()
            } else {
                d.model.clone()
            },
            Style::new().fg(Color::Cyan),
        ),
        Span::raw(" → "),
        Span::styled(chosen, Style::new().add_modifier(Modifier::BOLD)),
        Span::styled(
            format!(" {status} {}", d.outcome),
            if ok {
                Style::new().fg(Color::Green)
            } else {
                Style::new().fg(Color::Red)
            },
        ),
        Span::raw(match d.ttft {
            Some(t) if ok => format!(" ttft {}", seconds(Some(t.as_secs_f64()))),
            _ => String::new(),
        }),
    ])];
    for (n, attempt) in d.attempts.iter().enumerate() {
        let scores: Vec<String> = attempt
            .candidates
            .iter()
            .map(|c| {
                let mark = if c.server == attempt.server { "*" } else { "" };
                format!("{}{mark}={:.2}", short_url(&c.server), c.score)
            })
            .collect();
        let mut text = format!(
            "   try {}: {} by {} among {}",
            n + 1,
            short_url(&attempt.server),
            d.policy,
            if scores.is_empty() {
                "-".into()
            } else {
                scores.join(" ")
            }
        );
        if attempt.result != "delivered" && attempt.result != "answered" {
            text.push_str(&format!(" → {}", attempt.result));
            if let Some(why) = &attempt.why {
                text.push_str(&format!(" ({why})"));
            }
        }
        lines.push(Line::raw(text));
    }
    lines
}

fn draw_why(frame: &mut Frame, area: Rect, scene: &Scene) {
    let mut lines = vec![Line::styled(
        "the last routing decisions, newest first (score: lower wins; * chosen)",
        Style::new().add_modifier(Modifier::BOLD),
    )];
    if scene.decisions.is_empty() {
        lines.push(Line::raw("no request routed since the monitor started"));
    }
    // Bounded: only as many decisions as could fill the screen past the scroll.
    let wanted = scene.ui.why_scroll + area.height as usize;
    for decision in scene.decisions.iter() {
        if lines.len() > wanted {
            break;
        }
        lines.extend(decision_lines(decision));
    }
    let scroll = scene.ui.why_scroll.min(lines.len().saturating_sub(1)) as u16;
    let paragraph = Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .scroll((scroll, 0));
    frame.render_widget(paragraph, area);
}

fn draw_log(frame: &mut Frame, area: Rect, scene: &Scene) {
    let block = Block::new().borders(Borders::TOP).title(" log ");
    let inner = block.inner(area);
    let shown = &scene.log[scene.log.len().saturating_sub(inner.height as usize)..];
    let lines: Vec<Line> = shown.iter().map(|l| Line::raw(compact(l))).collect();
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// A text log line with its time of day only (`2026-12-03T16:31:45.026944Z  INFO x` becomes
/// `16:31:45  INFO x`): the pane is narrow, the date is today's. Other lines are kept whole.
fn compact(line: &str) -> String {
    let b = line.as_bytes();
    if b.len() > 27 && b[4] == b'-' && b[10] == b'T' && b[26] == b'Z' && line.is_char_boundary(27) {
        format!("{}{}", &line[11..19], &line[27..])
    } else {
        line.to_string()
    }
}

fn draw_footer(frame: &mut Frame, area: Rect, scene: &Scene) {
    let line = if scene.ui.quitting {
        Line::styled(
            format!(
                "draining: {} request(s) in flight; mvllm stops when they end",
                scene.active
            ),
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        )
    } else {
        let key = Style::new().add_modifier(Modifier::REVERSED);
        let mut spans = Vec::new();
        for (k, what) in [
            ("q", "quit"),
            ("↑↓", "select"),
            ("⏎", "detail"),
            ("w", "why"),
            ("s", "sort"),
            ("l", "log"),
            ("?", "help"),
        ] {
            spans.push(Span::styled(k, key));
            spans.push(Span::raw(format!(" {what}  ")));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_help(frame: &mut Frame, body: Rect) {
    let text = [
        "q, Ctrl-C   stop mvllm (finishes the requests in flight first)",
        "↑ ↓ j k     select a server (PgUp PgDn g G: further)",
        "Enter       the selected server in detail; again or Esc: back",
        "w           why: the last routing decisions and their scores",
        "s           sort by the next column: config, health, load,",
        "            req/s, ttft, errors",
        "l           show or hide the log pane",
        "? h         this help; Esc: back",
    ];
    let width =
        (text.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u16 + 4).min(body.width);
    let height = (text.len() as u16 + 2).min(body.height);
    let area = Rect {
        x: body.x + (body.width - width) / 2,
        y: body.y + (body.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, area);
    let lines: Vec<Line> = text.iter().map(|l| Line::raw(*l)).collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys ")),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::board::tests::view;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn screen(width: u16, height: u16, ui: &Ui, decisions: &VecDeque<Decision>) -> String {
        let mut board = Board::default();
        let mut down = view("http://10.0.0.2:8000", false, 3);
        down.last_error = Some("connect refused".into());
        board.sample(
            vec![
                view("http://10.0.0.1:8000", true, 7),
                down,
                view("http://gpu-node-with-a-long-name.internal:8000", true, 0),
            ],
            std::time::Instant::now(),
        );
        board.clients = vec![crate::monitor::board::ClientLine {
            name: "team-a".into(),
            in_flight: 2,
            requests: 40,
            refused: 3,
            tokens: 900,
        }];
        let scene = Scene {
            address: "127.0.0.1:8888",
            policy: "least-load",
            board: &board,
            ui,
            decisions,
            log: &["a log line".to_string()],
            active: 2,
        };
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, &scene)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn columns_collapse_in_order_and_use_wide_screens() {
        let names = |w| columns(w).iter().map(|c| c.1).collect::<Vec<_>>().join(" ");
        assert_eq!(names(80), "SERVER STATE LOAD INFL WAIT REQ/S ERR TTFT50");
        assert_eq!(names(42), "SERVER STATE LOAD");
        assert_eq!(names(30), "SERVER STATE");
        let wide = columns(200);
        assert_eq!(wide.len(), COLUMNS.len());
        assert_eq!(wide.iter().map(|c| c.2 + 1).sum::<u16>() - 1, 200);
        for width in [20, 80, 160] {
            assert!(columns(width).iter().map(|c| c.2 + 1).sum::<u16>() - 1 <= width);
        }
    }

    #[test]
    fn every_server_shows_at_80x24_with_its_state_in_words() {
        let text = screen(80, 24, &Ui::default(), &VecDeque::new());
        assert!(text.contains("servers 2/3 up"), "{text}");
        assert!(text.contains("10.0.0.1:8000"), "{text}");
        assert!(text.contains("10.0.0.2:8000"), "{text}");
        assert!(text.contains("gpu-node"), "{text}");
        assert!(text.contains("DOWN"), "{text}");
        assert!(text.contains("q quit"), "{text}");
        assert!(
            text.contains("clients: team-a 2 in flight, 40 req, 3 refused"),
            "client keys show by name: {text}"
        );
    }

    #[test]
    fn wide_screens_show_models_and_kv() {
        let text = screen(160, 40, &Ui::default(), &VecDeque::new());
        assert!(text.contains("MODELS") && text.contains("KV"), "{text}");
        assert!(text.contains("gpu-node-with-a-long-name.internal:8000"));
    }

    #[test]
    fn the_detail_the_why_view_and_the_log_pane() {
        let ui = Ui {
            screen: Screen::Detail,
            selected: Some("http://10.0.0.2:8000".into()),
            log_pane: true,
            ..Ui::default()
        };
        let text = screen(100, 30, &ui, &VecDeque::new());
        assert!(text.contains("connect refused"), "{text}");
        assert!(text.contains("time to first token"), "{text}");
        assert!(text.contains("a log line"), "{text}");

        let decision = Decision {
            at: SystemTime::now(),
            id: "req-1".into(),
            model: "llama".into(),
            policy: "least-load",
            attempts: vec![crate::decisions::DecidedAttempt {
                server: "http://10.0.0.1:8000".into(),
                candidates: vec![
                    crate::decisions::Candidate {
                        server: "http://10.0.0.1:8000".into(),
                        score: 0.25,
                    },
                    crate::decisions::Candidate {
                        server: "http://10.0.0.3:8000".into(),
                        score: 0.5,
                    },
                ],
                result: "delivered",
                why: None,
            }],
            status: Some(200),
            outcome: "ok",
            ttft: Some(std::time::Duration::from_millis(42)),
        };
        let ui = Ui {
            screen: Screen::Why,
            ..Ui::default()
        };
        let text = screen(100, 30, &ui, &VecDeque::from([decision]));
        assert!(
            text.contains("req-1 llama → 10.0.0.1:8000 200 ok ttft 42ms"),
            "{text}"
        );
        assert!(
            text.contains("10.0.0.1:8000*=0.25 10.0.0.3:8000=0.50"),
            "{text}"
        );
    }

    #[test]
    fn log_lines_keep_their_time_of_day() {
        assert_eq!(
            compact("2026-12-03T16:31:45.026944Z  INFO mvllm::run: stopped"),
            "16:31:45  INFO mvllm::run: stopped"
        );
        assert_eq!(compact("{\"level\":\"INFO\"}"), "{\"level\":\"INFO\"}");
        assert_eq!(compact("short"), "short");
    }

    #[test]
    fn urls_are_cut_in_the_middle() {
        assert_eq!(fit("abcdefghij", 5), "ab…ij");
        assert_eq!(fit("abc", 5), "abc");
        assert_eq!(fit("abc", 0), "");
    }
}

//! The monitor's state between frames (which screen, which server is selected, the sort
//! order, the log pane) and what each key does to it. No terminal here: keys in, state out.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::board::{Health, Row};

/// What fills the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// One row per server.
    Table,
    /// The selected server in full.
    Detail,
    /// The last routing decisions.
    Why,
    /// The keys.
    Help,
}

/// The table's sort column; `s` goes to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// As servers.toml lists them.
    Config,
    /// Unhealthy first.
    Health,
    /// Busiest first.
    Load,
    /// Most requests per second first.
    Rate,
    /// Slowest time to first token first.
    Ttft,
    /// Most errors first.
    Errors,
}

impl SortBy {
    pub fn name(self) -> &'static str {
        match self {
            SortBy::Config => "config",
            SortBy::Health => "health",
            SortBy::Load => "load",
            SortBy::Rate => "req/s",
            SortBy::Ttft => "ttft",
            SortBy::Errors => "errors",
        }
    }

    fn next(self) -> SortBy {
        match self {
            SortBy::Config => SortBy::Health,
            SortBy::Health => SortBy::Load,
            SortBy::Load => SortBy::Rate,
            SortBy::Rate => SortBy::Ttft,
            SortBy::Ttft => SortBy::Errors,
            SortBy::Errors => SortBy::Config,
        }
    }
}

/// What a key asks of the monitor's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Draw again now.
    Redraw,
    /// Stop the router, with the same graceful drain as SIGTERM.
    Quit,
}

#[derive(Debug, Clone)]
pub struct Ui {
    pub screen: Screen,
    pub sort: SortBy,
    /// The selected server, by URL (so that it stays selected when the order changes).
    pub selected: Option<String>,
    pub log_pane: bool,
    /// Lines scrolled down in the why view.
    pub why_scroll: usize,
    /// Set once `q` was pressed: the footer says the router is draining.
    pub quitting: bool,
}

impl Default for Ui {
    fn default() -> Self {
        Ui {
            screen: Screen::Table,
            sort: SortBy::Config,
            selected: None,
            log_pane: false,
            why_scroll: 0,
            quitting: false,
        }
    }
}

/// The rows' indices in `sort` order (ties keep the config order).
pub fn order(rows: &[Row], sort: SortBy) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let health_rank = |h: Health| match h {
        Health::Down => 0,
        Health::Ejected => 1,
        Health::New => 2,
        Health::Up => 3,
    };
    match sort {
        SortBy::Config => {}
        SortBy::Health => order.sort_by_key(|&i| health_rank(rows[i].health)),
        SortBy::Load => {
            order.sort_by(|&a, &b| (rows[b].view.utilization).total_cmp(&rows[a].view.utilization))
        }
        SortBy::Rate => {
            order.sort_by(|&a, &b| rows[b].requests_per_s.total_cmp(&rows[a].requests_per_s))
        }
        SortBy::Ttft => order.sort_by(|&a, &b| {
            let t = |i: usize| rows[i].ttft_p50.unwrap_or(-1.0);
            t(b).total_cmp(&t(a))
        }),
        SortBy::Errors => order.sort_by_key(|&i| std::cmp::Reverse(rows[i].view.totals.errors)),
    }
    order
}

impl Ui {
    /// The selected row's position in `order`, if any row is selected and still there.
    pub fn selected_position(&self, rows: &[Row], order: &[usize]) -> Option<usize> {
        let url = self.selected.as_deref()?;
        order.iter().position(|&i| rows[i].view.url == url)
    }

    /// Applies one key.
    pub fn key(&mut self, key: KeyEvent, rows: &[Row]) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => return self.quit(),
            KeyCode::Char('q') => return self.quit(),
            KeyCode::Esc | KeyCode::Backspace if self.screen != Screen::Table => {
                self.screen = Screen::Table;
            }
            KeyCode::Char('?') | KeyCode::Char('h') => {
                self.screen = if self.screen == Screen::Help {
                    Screen::Table
                } else {
                    Screen::Help
                };
            }
            KeyCode::Char('w') => {
                self.screen = if self.screen == Screen::Why {
                    Screen::Table
                } else {
                    Screen::Why
                };
                self.why_scroll = 0;
            }
            KeyCode::Char('l') => self.log_pane = !self.log_pane,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Enter if !rows.is_empty() => {
                if self.selected.is_none() {
                    self.move_selection(rows, 0);
                }
                self.screen = if self.screen == Screen::Detail {
                    Screen::Table
                } else {
                    Screen::Detail
                };
            }
            KeyCode::Up | KeyCode::Char('k') => self.step(rows, -1),
            KeyCode::Down | KeyCode::Char('j') => self.step(rows, 1),
            KeyCode::PageUp => self.step(rows, -10),
            KeyCode::PageDown => self.step(rows, 10),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(rows, 0),
            KeyCode::End | KeyCode::Char('G') => {
                self.move_selection(rows, rows.len().saturating_sub(1))
            }
            _ => return Action::Nothing,
        }
        Action::Redraw
    }

    fn quit(&mut self) -> Action {
        if self.quitting {
            return Action::Nothing;
        }
        self.quitting = true;
        Action::Quit
    }

    /// Up or down: scrolls the why view, or moves the selection.
    fn step(&mut self, rows: &[Row], by: isize) {
        if self.screen == Screen::Why {
            self.why_scroll = self.why_scroll.saturating_add_signed(by);
            return;
        }
        let order = order(rows, self.sort);
        let at = match self.selected_position(rows, &order) {
            Some(at) => at.saturating_add_signed(by),
            None => 0,
        };
        self.move_selection(rows, at);
    }

    fn move_selection(&mut self, rows: &[Row], position: usize) {
        let order = order(rows, self.sort);
        let position = position.min(order.len().saturating_sub(1));
        self.selected = order.get(position).map(|&i| rows[i].view.url.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::board::Board;
    use ratatui::crossterm::event::KeyEventKind;

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new_with_kind(code, KeyModifiers::NONE, KeyEventKind::Press)
    }

    fn board() -> Board {
        let mut board = Board::default();
        let views = vec![
            crate::monitor::board::tests::view("http://a", true, 1),
            crate::monitor::board::tests::view("http://b", false, 5),
            crate::monitor::board::tests::view("http://c", true, 3),
        ];
        board.sample(views, std::time::Instant::now());
        board
    }

    #[test]
    fn arrows_select_enter_opens_and_esc_goes_back() {
        let board = board();
        let rows = &board.rows;
        let mut ui = Ui::default();
        assert_eq!(ui.key(press(KeyCode::Down), rows), Action::Redraw);
        assert_eq!(ui.selected.as_deref(), Some("http://a"));
        ui.key(press(KeyCode::Char('j')), rows);
        ui.key(press(KeyCode::Down), rows);
        ui.key(press(KeyCode::Down), rows);
        assert_eq!(ui.selected.as_deref(), Some("http://c"), "stops at the end");
        ui.key(press(KeyCode::Char('k')), rows);
        assert_eq!(ui.selected.as_deref(), Some("http://b"));
        ui.key(press(KeyCode::Enter), rows);
        assert_eq!(ui.screen, Screen::Detail);
        ui.key(press(KeyCode::Esc), rows);
        assert_eq!(ui.screen, Screen::Table);
        assert_eq!(ui.key(press(KeyCode::Char('x')), rows), Action::Nothing);
    }

    #[test]
    fn sort_cycles_and_orders_rows() {
        let board = board();
        let rows = &board.rows;
        let mut ui = Ui::default();
        ui.key(press(KeyCode::Char('s')), rows);
        assert_eq!(ui.sort, SortBy::Health);
        assert_eq!(order(rows, ui.sort), [1, 0, 2], "the down server first");
        for _ in 0..5 {
            ui.key(press(KeyCode::Char('s')), rows);
        }
        assert_eq!(ui.sort, SortBy::Config, "six presses go round");
    }

    #[test]
    fn q_and_ctrl_c_quit_once() {
        let rows = &board().rows;
        let mut ui = Ui::default();
        assert_eq!(ui.key(press(KeyCode::Char('q')), rows), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(ui.key(ctrl_c, rows), Action::Nothing, "already draining");
        let mut ui = Ui::default();
        assert_eq!(ui.key(ctrl_c, rows), Action::Quit);
    }

    #[test]
    fn views_toggle() {
        let rows = &board().rows;
        let mut ui = Ui::default();
        ui.key(press(KeyCode::Char('w')), rows);
        assert_eq!(ui.screen, Screen::Why);
        ui.key(press(KeyCode::Down), rows);
        assert_eq!(ui.why_scroll, 1, "arrows scroll the why view");
        ui.key(press(KeyCode::Char('w')), rows);
        assert_eq!(ui.screen, Screen::Table);
        ui.key(press(KeyCode::Char('?')), rows);
        assert_eq!(ui.screen, Screen::Help);
        ui.key(press(KeyCode::Char('l')), rows);
        assert!(ui.log_pane);
    }
}

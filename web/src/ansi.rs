//! A log as HTML: each line a numbered, linkable row; ANSI SGR colours
//! (the 8/16 colours, bold, dim, italic, underline, reset; 256-colour and
//! RGB codes as inline colours) become spans; everything else is escaped
//! and other escape sequences are dropped.

use std::fmt::Write as _;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Style {
    fg: Option<String>,
    bg: Option<String>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

impl Style {
    fn is_plain(&self) -> bool {
        *self == Style::default()
    }

    fn open(&self, out: &mut String) {
        let mut classes = Vec::new();
        let mut css = String::new();
        for (name, v) in [("fg", &self.fg), ("bg", &self.bg)] {
            match v {
                Some(c) if c.starts_with('#') => {
                    let prop = if name == "fg" { "color" } else { "background" };
                    let _ = write!(css, "{prop}:{c};");
                }
                Some(c) => classes.push(format!("ansi-{name}-{c}")),
                None => {}
            }
        }
        for (on, name) in [
            (self.bold, "ansi-bold"),
            (self.dim, "ansi-dim"),
            (self.italic, "ansi-italic"),
            (self.underline, "ansi-underline"),
        ] {
            if on {
                classes.push(name.to_string());
            }
        }
        out.push_str("<span");
        if !classes.is_empty() {
            let _ = write!(out, " class=\"{}\"", classes.join(" "));
        }
        if !css.is_empty() {
            let _ = write!(out, " style=\"{css}\"");
        }
        out.push('>');
    }

    fn apply(&mut self, codes: &[u32]) {
        let mut i = 0;
        if codes.is_empty() {
            *self = Style::default();
        }
        while i < codes.len() {
            let c = codes[i];
            match c {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => (self.bold, self.dim) = (false, false),
                23 => self.italic = false,
                24 => self.underline = false,
                30..=37 => self.fg = Some((c - 30).to_string()),
                90..=97 => self.fg = Some((c - 90 + 8).to_string()),
                39 => self.fg = None,
                40..=47 => self.bg = Some((c - 40).to_string()),
                100..=107 => self.bg = Some((c - 100 + 8).to_string()),
                49 => self.bg = None,
                38 | 48 => {
                    let colour = match codes.get(i + 1) {
                        Some(5) => {
                            i += 2;
                            codes.get(i).map(|n| xterm(*n))
                        }
                        Some(2) if i + 4 < codes.len() => {
                            let (r, g, b) = (codes[i + 2], codes[i + 3], codes[i + 4]);
                            i += 4;
                            Some(format!(
                                "#{:02x}{:02x}{:02x}",
                                r.min(255),
                                g.min(255),
                                b.min(255)
                            ))
                        }
                        _ => None,
                    };
                    if c == 38 {
                        self.fg = colour;
                    } else {
                        self.bg = colour;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// An xterm 256-colour index as a CSS colour.
fn xterm(n: u32) -> String {
    match n {
        0..=15 => format!("{n}"),
        16..=231 => {
            let n = n - 16;
            let level = |v: u32| if v == 0 { 0 } else { 55 + v * 40 };
            format!(
                "#{:02x}{:02x}{:02x}",
                level(n / 36),
                level((n / 6) % 6),
                level(n % 6)
            )
        }
        _ => {
            let v = 8 + (n.min(255) - 232) * 10;
            format!("#{v:02x}{v:02x}{v:02x}")
        }
    }
}

fn escape(c: char, out: &mut String) {
    match c {
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '&' => out.push_str("&amp;"),
        '"' => out.push_str("&quot;"),
        c => out.push(c),
    }
}

/// One line's text without its escape sequences (for search).
pub fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            skip_escape(&mut chars);
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// Skips an escape sequence; returns its SGR codes when it is one.
fn skip_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Vec<u32>> {
    if chars.peek() != Some(&'[') {
        chars.next();
        return None;
    }
    chars.next();
    let mut params = String::new();
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7e}').contains(&c) {
            if c == 'm' {
                return Some(params.split(';').map(|p| p.parse().unwrap_or(0)).collect());
            }
            return None;
        }
        params.push(c);
    }
    None
}

/// A job's step header (`── step NAME`, `── after-step NAME`): the step's
/// name and whether it is an after-step.
pub fn step_header(line: &str) -> Option<(&str, bool)> {
    if let Some(name) = line.strip_prefix("── step ") {
        return Some((name.trim_end(), false));
    }
    line.strip_prefix("── after-step ")
        .map(|name| (name.trim_end(), true))
}

/// The line number of each step's header in a job's log, in order.
pub fn step_lines(log: &str) -> Vec<(String, bool, usize)> {
    log.lines()
        .enumerate()
        .filter_map(|(i, l)| step_header(l).map(|(name, after)| (name.to_string(), after, i + 1)))
        .collect()
}

/// The log as rows: `<div class="line" id="L<n>">` with a link to itself.
/// `href(n)` is the link of line `n`; `mark` highlights lines containing it.
/// A job's log is cut into one collapsible section per step
/// (`<details class="section">`, its header line the summary).
pub fn render(log: &str, href: &dyn Fn(usize) -> String, mark: &str) -> String {
    render_from(log, 1, true, href, mark)
}

/// [`render`] of a part of a log whose first line is line `first`; without
/// `sections` a job's step headers are plain lines (a part cannot hold a
/// whole section).
pub fn render_from(
    log: &str,
    first: usize,
    sections: bool,
    href: &dyn Fn(usize) -> String,
    mark: &str,
) -> String {
    let mut out = String::with_capacity(log.len() * 2);
    let mut style = Style::default();
    let needle = mark.to_lowercase();
    let mut in_section = false;
    for (i, line) in log.lines().enumerate() {
        let n = first + i;
        let hit = !needle.is_empty() && plain(line).to_lowercase().contains(&needle);
        let header = step_header(line).filter(|_| sections);
        let tag = if header.is_some() { "summary" } else { "div" };
        if let Some((name, _)) = header {
            if in_section {
                out.push_str("</details>");
            }
            in_section = true;
            out.push_str("<details class=\"section\" open data-step=\"");
            for c in name.chars() {
                escape(c, &mut out);
            }
            out.push_str("\">");
        }
        let _ = write!(
            out,
            "<{tag} class=\"line{}\" id=\"L{n}\"><a class=\"ln\" href=\"{}\">{n}</a><span class=\"text\">",
            if hit { " hit" } else { "" },
            href(n)
        );
        // The style carries over from the line before.
        let mut open = !style.is_plain();
        if open {
            style.open(&mut out);
        }
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                if let Some(codes) = skip_escape(&mut chars) {
                    if open {
                        out.push_str("</span>");
                    }
                    style.apply(&codes);
                    open = !style.is_plain();
                    if open {
                        style.open(&mut out);
                    }
                }
            } else if c != '\r' {
                escape(c, &mut out);
            }
        }
        if open {
            out.push_str("</span>");
        }
        let _ = write!(out, "</span></{tag}>");
    }
    if in_section {
        out.push_str("</details>");
    }
    out
}

//! Status names, classes and colours, shared by every page, the title and
//! the favicon.

/// The CSS class of a status (`succeeded`, `failed`, …).
pub fn class(status: &str) -> String {
    format!("status status-{status}")
}

/// A symbol readable without colour.
pub fn symbol(status: &str) -> &'static str {
    match status {
        "succeeded" => "✔",
        "failed" => "✘",
        "running" => "●",
        "queued" | "pending" | "scheduled" => "○",
        "skipped" => "↷",
        "cancelled" => "⊘",
        "interrupted" => "⚡",
        "waiting_approval" => "‖",
        "ignored" => "–",
        "rejected" => "⊗",
        _ => "?",
    }
}

/// The colour of a status (favicon, DAG).
pub fn colour(status: &str) -> &'static str {
    match status {
        "succeeded" => "#2da44e",
        "failed" | "interrupted" | "rejected" => "#cf222e",
        "running" | "waiting_approval" => "#bf8700",
        "cancelled" | "skipped" => "#8c959f",
        _ => "#6e7781",
    }
}

/// Sets the tab's title and its favicon (a dot in the status's colour).
pub fn show_in_tab(title: &str, status: Option<&str>) {
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    doc.set_title(title);
    let colour = status.map_or("#6e7781", colour);
    let svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'><circle cx='8' cy='8' r='7' fill='{colour}'/></svg>"
    );
    let href = format!("data:image/svg+xml,{}", svg.replace('#', "%23"));
    if let Some(link) = doc.get_element_by_id("favicon") {
        let _ = link.set_attribute("href", &href);
    }
}

/// `1234` ms as `1.2s`, `75000` as `1m15s`.
pub fn duration(ms: Option<u64>) -> String {
    match ms {
        None => String::new(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The browser's clock, as a document's times are (UTC).
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(js_sys::Date::now() as i64).unwrap_or_default()
}

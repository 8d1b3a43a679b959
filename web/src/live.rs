//! Server-Sent Events from `sentinel serve` (live mode). The browser sends
//! the session cookie with them (same origin): no token in the URL.

use wasm_bindgen::JsCast as _;
use wasm_bindgen::prelude::Closure;

/// An open event stream; closed when dropped.
pub struct Stream {
    source: web_sys::EventSource,
    _handlers: Vec<Closure<dyn FnMut(web_sys::MessageEvent)>>,
}

impl Stream {
    /// True once the browser gave up on it (an error answer, say).
    pub fn is_closed(&self) -> bool {
        self.source.ready_state() == web_sys::EventSource::CLOSED
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.source.close();
    }
}

/// A handler of one event name, given the event's data.
pub type Handler = Box<dyn FnMut(String)>;

/// Opens `url` and calls each handler on its events.
pub fn open(url: &str, handlers: Vec<(&'static str, Handler)>) -> Option<Stream> {
    let source = web_sys::EventSource::new(url).ok()?;
    let mut kept = Vec::new();
    for (name, mut handle) in handlers {
        let cb =
            Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
                handle(e.data().as_string().unwrap_or_default());
            });
        let _ = source.add_event_listener_with_callback(name, cb.as_ref().unchecked_ref());
        kept.push(cb);
    }
    Some(Stream {
        source,
        _handlers: kept,
    })
}

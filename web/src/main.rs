//! The Sentinel results web app: runs, a run's DAG and timeline, a stage's
//! log — read from the results layout over HTTP (a bucket's website, any
//! static host, or `sentinel serve`), live over Server-Sent Events when the
//! server is the source.

mod ansi;
mod dag;
mod fetch;
mod live;
mod pages;
mod route;
mod source;
mod status;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(pages::App);
}

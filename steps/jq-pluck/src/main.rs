//! jq-pluck: evaluates a jq filter with jaq (a real jq implementation) over
//! JSON from a setting or a workspace file, and prints each result on its own
//! line — which makes the result the stage's output. `raw` prints strings
//! without quotes, like `jq -r`.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use sentinel_step::{Step, fail, run};
use serde::Deserialize;

#[derive(Deserialize)]
struct Settings {
    filter: String,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    raw: bool,
}

fn main() {
    run(|step: &Step| {
        let s: Settings = step.settings()?;
        let text = match (&s.input, &s.file) {
            (Some(input), None) => input.clone().into_bytes(),
            (None, Some(file)) => std::fs::read(step.workspace_path(file))
                .map_err(|e| fail(format!("cannot read {file} from the workspace: {e}")))?,
            (Some(_), Some(_)) => return Err(fail("give `input` or `file`, not both")),
            (None, None) => return Err(fail("give `input` (JSON text) or `file` (a workspace file)")),
        };
        let input = jaq_json::read::parse_single(&text).map_err(|e| fail(format!("the input is not JSON: {e}")))?;

        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code: s.filter.as_str(), path: () })
            .map_err(|errs| fail(format!("invalid filter `{}`: {} error(s) while parsing", s.filter, errs.len())))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| fail(format!("invalid filter `{}`: {} undefined name(s)", s.filter, errs.len())))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
        for out in filter.id.run((ctx, input)).map(unwrap_valr) {
            let v = out.map_err(|e| fail(format!("the filter failed: {e}")))?;
            match (&v, s.raw) {
                (Val::TStr(b) | Val::BStr(b), true) => println!("{}", String::from_utf8_lossy(b)),
                _ => println!("{v}"),
            }
        }
        Ok(())
    })
}

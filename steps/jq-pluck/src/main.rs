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

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// Compiles `code`. Most plucks (`.a.b`, `.[0]`, `keys`, `length`) need only
/// the native filters, so the jq-defined prelude (which costs more to parse
/// and compile than everything else a pluck does) is loaded only when the
/// filter names something the natives do not define. No prelude definition
/// shadows a native one, so both paths give the same meaning.
fn compile(code: &str) -> Result<Filter, sentinel_step::Error> {
    let natives = || {
        jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
    };
    let parse_err = |n: usize| {
        fail(format!(
            "invalid filter `{code}`: {n} error(s) while parsing"
        ))
    };
    let arena = Arena::default();
    let bare = Loader::new([])
        .load(&arena, File { code, path: () })
        .map_err(|e| parse_err(e.len()))?;
    if let Ok(filter) = Compiler::default().with_funs(natives()).compile(bare) {
        return Ok(filter);
    }
    let prelude = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let modules = Loader::new(prelude)
        .load(&arena, File { code, path: () })
        .map_err(|e| parse_err(e.len()))?;
    Compiler::default()
        .with_funs(natives())
        .compile(modules)
        .map_err(|errs| {
            fail(format!(
                "invalid filter `{code}`: {} undefined name(s)",
                errs.len()
            ))
        })
}

fn main() {
    run(|step: &Step| {
        let s: Settings = step.settings()?;
        let text = match (&s.input, &s.file) {
            (Some(input), None) => input.clone().into_bytes(),
            (None, Some(file)) => std::fs::read(step.workspace_path(file))
                .map_err(|e| fail(format!("cannot read {file} from the workspace: {e}")))?,
            (Some(_), Some(_)) => return Err(fail("give `input` or `file`, not both")),
            (None, None) => {
                return Err(fail(
                    "give `input` (JSON text) or `file` (a workspace file)",
                ));
            }
        };
        let input = jaq_json::read::parse_single(&text)
            .map_err(|e| fail(format!("the input is not JSON: {e}")))?;

        let filter = compile(&s.filter)?;
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

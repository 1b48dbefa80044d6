//! `envbox call NAME METHOD [--arg k=v]... [--json '{...}'] [--timeout SECS]`
//! and `envbox methods NAME`.

use std::path::Path;
use std::time::Duration;

use envbox::client::{CallError, CallOptions};
use envbox::{Env, Result};
use serde_json::{Map, Value};

#[derive(clap::Args)]
pub struct Args {
    /// A sandbox, or a group of replicas (one is picked at random).
    name: String,
    method: String,
    /// A keyword argument; VALUE is parsed as JSON when it parses, else taken as a string.
    #[arg(long = "arg", short = 'a')]
    args: Vec<String>,
    /// Keyword arguments as a JSON object; wins over --arg on the same key.
    #[arg(long)]
    json: Option<String>,
    /// A positional argument, parsed like --arg values (repeatable, in order).
    #[arg(long = "pos", short = 'p')]
    positional: Vec<String>,
    /// Give up after this many seconds (client side).
    #[arg(long, value_parser = super::parse_timeout)]
    timeout: Option<Duration>,
}

#[derive(clap::Args)]
pub struct MethodsArgs {
    name: String,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
}

/// Exit code when the environment raised or refused the call.
const EXIT_ENV_ERROR: i32 = 1;
/// Exit code when the infrastructure failed (timeout, dead process).
const EXIT_INFRA_ERROR: i32 = 3;

fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The socket of one running member of `name`.
pub(super) fn env_of(root: &Path, name: &str) -> Result<Option<Env>> {
    let members: Vec<_> =
        envbox::sandbox::members(root, name)?.into_iter().filter(|m| m.state == "running" && m.serves.is_some()).collect();
    if members.is_empty() {
        eprintln!("envbox: no running environment named {name:?}; start one with `envbox run --dir ENV_DIR --name {name}`");
        return Ok(None);
    }
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    let pick = &members[u32::from_le_bytes(b) as usize % members.len()];
    Ok(Some(Env::unix(root.join(&pick.name).join(envbox::sandbox::state::ENV_SOCKET_FILE))))
}

fn runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| envbox::Error::Io {
        step: "starting the client runtime",
        name: name.to_string(),
        source: e,
    })
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let mut kwargs = Map::new();
    for kv in &a.args {
        let Some((k, v)) = kv.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            eprintln!("envbox: --arg {kv:?} must be KEY=VALUE");
            return Ok(super::EXIT_FAILURE);
        };
        kwargs.insert(k.to_string(), parse_value(v));
    }
    if let Some(text) = &a.json {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(obj)) => kwargs.extend(obj),
            Ok(_) => {
                eprintln!("envbox: --json must be a JSON object of keyword arguments");
                return Ok(super::EXIT_FAILURE);
            }
            Err(e) => {
                eprintln!("envbox: --json is not valid JSON: {e}");
                return Ok(super::EXIT_FAILURE);
            }
        }
    }
    let timeout = a.timeout;
    let Some(env) = env_of(root, &a.name)? else { return Ok(super::EXIT_FAILURE) };
    let args: Vec<Value> = a.positional.iter().map(|p| parse_value(p)).collect();
    let result = runtime(&a.name)?.block_on(env.call_with(&a.method, args, kwargs, CallOptions { timeout }));
    match result {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(0)
        }
        Err(e) => {
            eprintln!("envbox: {} failed: {e}", a.method);
            if let CallError::Raised { traceback, .. } = &e {
                if !traceback.is_empty() {
                    eprintln!("{}", traceback.trim_end());
                }
            }
            Ok(if e.is_infrastructure() { EXIT_INFRA_ERROR } else { EXIT_ENV_ERROR })
        }
    }
}

pub fn methods(root: &Path, a: MethodsArgs) -> Result<i32> {
    let Some(env) = env_of(root, &a.name)? else { return Ok(super::EXIT_FAILURE) };
    match runtime(&a.name)?.block_on(env.list_methods()) {
        Ok(methods) => {
            if a.json {
                super::print_json(&methods);
            } else {
                for m in methods {
                    let doc = m.doc.map(|d| format!("  # {d}")).unwrap_or_default();
                    println!("{:<8} {}{}{doc}", m.source, m.name, m.signature);
                }
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("envbox: listing the methods of {} failed: {e}", a.name);
            Ok(EXIT_INFRA_ERROR)
        }
    }
}

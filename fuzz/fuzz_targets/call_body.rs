//! `envbox::agent::dispatch::{parse_call, restful_call}` on arbitrary bodies
//! (what any client may POST to /call or /{method}).
//!
//! Invariants:
//! - no panic;
//! - `Ok(call)`: `args` is a JSON array and `kwargs` a JSON object (their raw
//!   text parses), and both are the body's own (or `[]`/`{}` when absent):
//!   re-parsing the forwarded text gives the same values, numbers included;
//!   for `parse_call`, `method` is the body's "method" string;
//! - the `timeout` kwarg is read as the dispatcher needs it: absent or null
//!   is no timeout, a JSON number is that number, true/false are 1/0, any
//!   other non-string is invalid; a timeout that is accepted is not NaN
//!   (the dispatcher turns it into a `Duration`, which panics on NaN);
//! - a string timeout with more than one leading sign is invalid (Python's
//!   `float()`, which the reference uses, rejects it);
//! - `parse_call` errors are 422 with a JSON body whose "detail" is a
//!   non-empty list; `restful_call` errors are 500 with a JSON "detail"
//!   string; neither sets `x-envbox-error`;
//! - a body that `parse_call` accepts and that names args or kwargs gives
//!   `restful_call` the same arguments.
#![no_main]

mod common;

use envbox::agent::dispatch::{parse_call, restful_call, Call, Reply};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn raw_json(c: &Call) -> (Value, Value) {
    let args: Value = serde_json::from_str(c.args.get()).expect("args is JSON");
    let kwargs: Value = serde_json::from_str(c.kwargs.get()).expect("kwargs is JSON");
    assert!(args.is_array(), "args {args} is not a list");
    assert!(kwargs.is_object(), "kwargs {kwargs} is not an object");
    (args, kwargs)
}

/// Whether the forwarded JSON `raw` is the body's value `v`. Exact by
/// default; with ENVBOX_FUZZ_SKIP_KNOWN=1 compared as re-serialized text,
/// which tolerates the known float-precision finding (README.md).
fn same(raw: &str, parsed: &Value, v: &Value) -> bool {
    if common::skip_known() {
        raw == serde_json::to_string(v).unwrap()
    } else {
        parsed == v
    }
}

fn check_timeout(c: &Call, kwargs: &Value) {
    match (kwargs.get("timeout"), &c.timeout) {
        (None | Some(Value::Null), t) => assert_eq!(*t, Ok(None)),
        (Some(Value::Number(n)), t) => assert_eq!(*t, Ok(n.as_f64())),
        (Some(Value::Bool(b)), t) => assert_eq!(*t, Ok(Some(if *b { 1.0 } else { 0.0 }))),
        (Some(Value::String(s)), t) => {
            if let Ok(Some(f)) = t {
                if !common::skip_known() {
                    assert!(!f.is_nan(), "timeout {s:?} accepted as NaN: the dispatcher's Duration::from_secs_f64 panics on it");
                    let signs = s.trim().bytes().take_while(|b| matches!(b, b'+' | b'-')).count();
                    assert!(signs <= 1, "timeout {s:?} accepted as {f}; Python's float() rejects it");
                }
            }
        }
        (Some(_), t) => assert_eq!(*t, Err(())),
    }
}

fn check_error(r: &Reply, status: u16) -> Value {
    assert_eq!(r.status, status);
    assert!(r.error.is_none(), "a validation error classed as {:?}", r.error);
    serde_json::from_slice(&r.body).expect("error body is JSON")
}

fuzz_target!(|data: &[u8]| {
    let body: Option<Value> = serde_json::from_slice(data).ok();
    let obj = body.as_ref().and_then(Value::as_object);

    let parsed = parse_call(data);
    match &parsed {
        Ok(c) => {
            let obj = obj.expect("parse_call accepted a body that is not a JSON object");
            assert_eq!(obj.get("method"), Some(&Value::String(c.method.clone())));
            let (args, kwargs) = raw_json(c);
            let want_args = obj.get("args").cloned().unwrap_or(Value::Array(vec![]));
            let want_kwargs = obj.get("kwargs").cloned().unwrap_or(Value::Object(Default::default()));
            assert!(same(c.args.get(), &args, &want_args), "args {} forwarded for {want_args}", c.args.get());
            assert!(same(c.kwargs.get(), &kwargs, &want_kwargs), "kwargs {} forwarded for {want_kwargs}", c.kwargs.get());
            check_timeout(c, &kwargs);
        }
        Err(r) => {
            let b = check_error(r, 422);
            let detail = b.get("detail").and_then(Value::as_array).expect("422 detail is a list");
            assert!(!detail.is_empty(), "422 with no error entries");
            for e in detail {
                assert!(e.get("type").is_some_and(Value::is_string) && e.get("loc").is_some_and(Value::is_array), "entry {e}");
            }
        }
    }

    match restful_call("m", data) {
        Ok(c) => {
            assert_eq!(c.method, "m");
            let (args, kwargs) = raw_json(&c);
            let (want_args, want_kwargs) = match obj {
                Some(o) if o.contains_key("args") || o.contains_key("kwargs") => (
                    o.get("args").cloned().unwrap_or(Value::Array(vec![])),
                    o.get("kwargs").cloned().unwrap_or(Value::Object(Default::default())),
                ),
                Some(o) => (Value::Array(vec![]), Value::Object(o.clone())),
                None => (Value::Array(vec![]), Value::Object(Default::default())),
            };
            assert!(same(c.args.get(), &args, &want_args), "args {} forwarded for {want_args}", c.args.get());
            assert!(same(c.kwargs.get(), &kwargs, &want_kwargs), "kwargs {} forwarded for {want_kwargs}", c.kwargs.get());
            check_timeout(&c, &kwargs);
            if let (Ok(p), Some(o)) = (&parsed, obj) {
                if o.contains_key("args") || o.contains_key("kwargs") {
                    assert_eq!((p.args.get(), p.kwargs.get()), (c.args.get(), c.kwargs.get()));
                }
            }
        }
        Err(r) => {
            let b = check_error(&r, 500);
            assert!(b.get("detail").is_some_and(Value::is_string), "500 detail {b}");
            assert!(parsed.is_err(), "restful_call refused what parse_call accepted");
        }
    }
});

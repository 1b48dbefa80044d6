//! `envbox init NAME [--type function|http] [--template basic|actor|fastapi]`:
//! a new environment directory that `envbox run --dir NAME` serves as is.

use std::path::{Path, PathBuf};

use envbox::{EnvKind, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The directory to create.
    name: PathBuf,
    /// function: env.py holds an Actor or functions; http: env.py is a FastAPI app.
    #[arg(long = "type", default_value = "function")]
    kind: EnvKind,
    /// basic (module functions), actor (an Actor class) or fastapi (HTTP).
    #[arg(long)]
    template: Option<String>,
}

const BASIC: &str = include_str!("templates/basic.py");
const ACTOR: &str = include_str!("templates/actor.py");
const FASTAPI: &str = include_str!("templates/fastapi.py");

const DOCKERFILE: &str = "# For container-based frameworks; envbox serves env.py without building anything.\n\
FROM python:3.12-slim\nWORKDIR /app\nCOPY . /app\nRUN if [ -s requirements.txt ]; then pip install --no-cache-dir -r requirements.txt; fi\n";

pub fn run(_root: &Path, a: Args) -> Result<i32> {
    let template = a.template.as_deref().unwrap_or(if a.kind == EnvKind::Http { "fastapi" } else { "basic" });
    let (source, requirements) = match (template, a.kind) {
        ("basic", EnvKind::Function) => (BASIC, ""),
        ("actor", EnvKind::Function) => (ACTOR, ""),
        ("fastapi", EnvKind::Http) => (FASTAPI, "fastapi\nuvicorn\n"),
        ("basic" | "actor" | "fastapi", kind) => {
            let kind = if kind == EnvKind::Http { "http" } else { "function" };
            eprintln!(
                "envbox: template {template:?} does not fit --type {kind} (basic and actor are function environments, fastapi is http)"
            );
            return Ok(super::EXIT_FAILURE);
        }
        _ => {
            eprintln!("envbox: unknown template {template:?}: use basic, actor or fastapi");
            return Ok(super::EXIT_FAILURE);
        }
    };
    if a.name.exists() {
        eprintln!("envbox: {} already exists; pick a new directory name", a.name.display());
        return Ok(super::EXIT_FAILURE);
    }
    let io = |step: &'static str| {
        let name = a.name.display().to_string();
        move |source| envbox::Error::Io { step, name: name.clone(), source }
    };
    std::fs::create_dir_all(&a.name).map_err(io("creating the environment directory"))?;
    std::fs::write(a.name.join("env.py"), source).map_err(io("writing env.py"))?;
    std::fs::write(a.name.join("requirements.txt"), requirements).map_err(io("writing requirements.txt"))?;
    std::fs::write(a.name.join("Dockerfile"), DOCKERFILE).map_err(io("writing the Dockerfile"))?;
    let dir = a.name.display();
    let name = a.name.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "demo".into());
    let type_flag = if a.kind == EnvKind::Http { " --type http" } else { "" };
    println!("created {dir}/ (env.py, requirements.txt, Dockerfile) from the {template} template");
    println!("next:   envbox run --dir {dir} --name {name}{type_flag}");
    println!("        envbox call {name} evaluate --arg task_id=1");
    Ok(0)
}

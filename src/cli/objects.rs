//! `plexi put`, `get`, `rm`, `info` and `ls`: storing, reading (blake3
//! checked against the ETag before anything is written), deleting and
//! describing one object through any node, and listing the cluster's
//! objects page by page.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use clap::Args;
use plexi_api::model::{DataInfo, ObjectList, PutResult};
use reqwest::Method;

use super::client::{data_path, parse_consistency, ApiArgs, Consistency};
use super::table::{dash, human_bytes, yes_no, Left, Right, Table};

#[derive(Args, Debug)]
pub struct PutArgs {
    pub data_id: String,
    /// File to store; `-` or absent reads standard input.
    pub file: Option<PathBuf>,
    /// Free-form type stored with the object (node default: application/octet-stream).
    #[arg(long)]
    pub data_type: Option<String>,
    /// strong | eventual | weak (default: the cluster's consistency_level).
    #[arg(long, value_parser = parse_consistency)]
    pub consistency: Option<Consistency>,
    /// Total copies (default: the cluster's default_replication_factor).
    #[arg(long)]
    pub replication_factor: Option<u32>,
    /// Print the raw JSON answer.
    #[arg(long)]
    pub json: bool,
}

pub async fn put(api: &ApiArgs, a: &PutArgs) -> Result<()> {
    let bytes = match a.file.as_deref() {
        None => read_stdin()?,
        Some(p) if p == Path::new("-") => read_stdin()?,
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
    };
    let mut query = Vec::new();
    if let Some(t) = &a.data_type {
        query.push(("data_type", t.clone()));
    }
    if let Some(c) = a.consistency {
        query.push(("consistency", c.as_str().to_string()));
    }
    if let Some(rf) = a.replication_factor {
        query.push(("replication_factor", rf.to_string()));
    }
    let r: PutResult = api
        .call(
            Method::PUT,
            &data_path(&a.data_id),
            &query,
            Some(Bytes::from(bytes)),
        )
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "stored {} ({}, {} bytes) version {} checksum {} consistency {} rf {}",
        r.data_id,
        r.data_type,
        r.size_bytes,
        r.version,
        r.checksum,
        r.consistency_level,
        r.replication_factor
    );
    for n in &r.replicas {
        let acked = r.acknowledged_by.contains(n);
        println!(
            "  replica {n}{}",
            if acked { " (acknowledged)" } else { "" }
        );
    }
    if r.under_replicated {
        println!(
            "  warning: under-replicated ({} of {} replicas placed); repair will add the missing ones",
            r.replicas.len(),
            r.replication_factor
        );
    }
    Ok(())
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut buf)
        .context("cannot read standard input")?;
    Ok(buf)
}

#[derive(Args, Debug)]
pub struct GetArgs {
    pub data_id: String,
    /// Write the bytes to this file instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// strong | eventual | weak (default: the cluster's consistency_level).
    #[arg(long, value_parser = parse_consistency)]
    pub consistency: Option<Consistency>,
}

pub async fn get(api: &ApiArgs, a: &GetArgs) -> Result<()> {
    let mut query = Vec::new();
    if let Some(c) = a.consistency {
        query.push(("consistency", c.as_str().to_string()));
    }
    let res = api
        .request(Method::GET, &data_path(&a.data_id), &query, None)
        .await?;
    let etag = res
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_string()
        });
    let bytes = res.bytes().await.context("the transfer broke off")?;
    let got = blake3::hash(&bytes).to_hex().to_string();
    match etag {
        None => bail!(
            "the answer carries no ETag: cannot verify the {} bytes received; nothing written",
            bytes.len()
        ),
        Some(want) if !want.eq_ignore_ascii_case(&got) => bail!(
            "CHECKSUM MISMATCH for {}: the node says blake3 {want} but the {} bytes received hash to {got}; nothing written",
            a.data_id,
            bytes.len()
        ),
        Some(_) => {}
    }
    match &a.output {
        Some(p) if p != Path::new("-") => {
            std::fs::write(p, &bytes).with_context(|| format!("cannot write {}", p.display()))?
        }
        _ => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&bytes).and_then(|()| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(e).context("cannot write standard output"),
            }
        }
    }
    Ok(())
}

pub async fn rm(api: &ApiArgs, data_id: &str) -> Result<()> {
    api.request(Method::DELETE, &data_path(data_id), &[], None)
        .await?;
    println!("deleted {data_id}");
    Ok(())
}

pub async fn info(api: &ApiArgs, data_id: &str, json: bool) -> Result<()> {
    let i: DataInfo = api.get(&format!("{}/info", data_path(data_id))).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    println!("data_id:            {}", i.data_id);
    println!("data_type:          {}", i.data_type);
    println!("size:               {} bytes", i.size_bytes);
    println!("checksum (blake3):  {}", i.checksum);
    println!("version:            {}", i.version);
    println!("consistency:        {}", i.consistency_level);
    println!(
        "replication:        {} of {} live{}",
        i.live_replicas,
        i.replication_factor,
        if i.under_replicated {
            " (UNDER-REPLICATED)"
        } else {
            ""
        }
    );
    println!("partition:          {}", i.partition);
    println!("created_at:         {}", i.created_at);
    println!(
        "last_accessed:      {} ({} accesses)",
        i.last_accessed.as_deref().unwrap_or("-"),
        i.access_count
    );
    let mut t = Table::new(&[
        ("REPLICA", Left),
        ("STATUS", Left),
        ("COPY", Left),
        ("CURRENT", Left),
        ("HEALTHY", Left),
        ("VERSION", Left),
    ]);
    for r in &i.replicas {
        t.row([
            r.node_id.to_string(),
            r.status.to_string(),
            yes_no(r.has_copy).to_string(),
            yes_no(r.is_current).to_string(),
            yes_no(r.is_healthy).to_string(),
            dash(&r.version).to_string(),
        ]);
    }
    t.print();
    Ok(())
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only ids starting with this.
    pub prefix: Option<String>,
    /// Objects per request (1..=1000); every page is fetched.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// Most pages `plexi ls` fetches (with 1000 objects a page: 10M objects).
const MAX_LS_PAGES: usize = 10_000;

pub async fn ls(api: &ApiArgs, a: &LsArgs) -> Result<()> {
    let mut t = Table::new(&[
        ("DATA_ID", Left),
        ("SIZE", Right),
        ("TYPE", Left),
        ("VERSION", Left),
        ("REPLICAS", Left),
    ]);
    let mut after: Option<String> = None;
    let mut unreachable: Vec<String> = Vec::new();
    let mut complete = true;
    let mut count = 0usize;
    for _ in 0..MAX_LS_PAGES {
        let mut query = vec![("limit", a.limit.to_string())];
        if let Some(p) = &a.prefix {
            query.push(("prefix", p.clone()));
        }
        if let Some(k) = &after {
            query.push(("after", k.clone()));
        }
        let page: ObjectList = api
            .call(Method::GET, "/api/v1/clustering/storage/data", &query, None)
            .await?;
        for o in &page.objects {
            t.row([
                o.data_id.clone(),
                human_bytes(o.size_bytes),
                o.data_type.clone(),
                o.version.clone(),
                format!(
                    "{}/{} {}",
                    o.replicas_found, o.replication_factor, o.replica_health
                ),
            ]);
        }
        count += page.objects.len();
        complete &= page.complete;
        for n in page.unreachable_nodes {
            if !unreachable.contains(&n) {
                unreachable.push(n);
            }
        }
        match page.next_after {
            Some(k) => after = Some(k),
            None => {
                after = None;
                break;
            }
        }
    }
    t.print();
    println!("{count} objects");
    if after.is_some() {
        eprintln!("stopped after {MAX_LS_PAGES} pages; more objects follow");
    }
    if !complete {
        bail!(
            "the listing is incomplete: {} unreachable, and objects held only there are not listed",
            unreachable.join(", ")
        );
    } else if !unreachable.is_empty() {
        eprintln!(
            "note: {} unreachable; every object still has a reachable replica",
            unreachable.join(", ")
        );
    }
    Ok(())
}

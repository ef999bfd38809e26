//! `herd users add NAME`: the password comes from standard input, never from argv (where `ps`
//! and shell history would show it).

use std::io::BufRead;

use anyhow::{bail, Context};
use herd_session_store::Keys;

use crate::{cli::UsersCommand, serve::connect_redis};

use super::Users;

pub(crate) async fn run(command: UsersCommand) -> anyhow::Result<i32> {
    let (name, redis, passwd) = match command {
        UsersCommand::Add { name, redis } => (name, redis, false),
        UsersCommand::Passwd { name, redis } => (name, redis, true),
    };
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password).context("cannot read the password from stdin")?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("no password on standard input (try: echo 'secret' | herd users add {name})");
    }
    let url = crate::secrets::configured_url(&redis)?.unwrap_or_else(crate::cli::default_redis_url);
    let pool = connect_redis(&redis.config(url)).await?;
    let keys = Keys::new(redis.key_prefix.clone());
    Users::new(pool.clone(), keys.clone()).set_password(&name, password).await?;
    if passwd {
        // A changed password must not leave old logins (perhaps the attacker's) alive.
        let ended = super::sessions::UserSessions::new(pool, keys, redis.replica_wait()).end_all(&name).await?;
        println!("password of {name} changed; {ended} session(s) ended");
    } else {
        println!("user {name} saved");
    }
    Ok(0)
}

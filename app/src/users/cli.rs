//! `herd users add NAME`: the password comes from standard input, never from argv (where `ps`
//! and shell history would show it).

use std::io::BufRead;

use anyhow::{bail, Context};
use herd_session_store::Keys;

use crate::{cli::UsersCommand, serve::connect_redis};

use super::Users;

pub async fn run(command: UsersCommand) -> anyhow::Result<i32> {
    match command {
        UsersCommand::Add { name, redis } => {
            let mut password = String::new();
            std::io::stdin().lock().read_line(&mut password).context("cannot read the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("no password on standard input (try: echo 'secret' | herd users add {name})");
            }
            let url = redis.redis_url.clone().unwrap_or_else(crate::cli::default_redis_url);
            let pool = connect_redis(&url).await?;
            Users::new(pool, Keys::new(redis.key_prefix)).set_password(&name, password).await?;
            println!("user {name} saved");
            Ok(0)
        }
    }
}

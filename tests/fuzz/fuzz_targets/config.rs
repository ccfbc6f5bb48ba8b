//! Fuzz target: the config file (YAML) through parse and validate, as a node
//! reads it at start. A bad file must be an error naming the key, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexi::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        let _ = config.validate();
    }
});

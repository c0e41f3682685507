//! `Browser`: Debian's headless Chromium driven through `chromedriver`
//! (WebDriver, with `fantoccini`), for the coordinator's web view.
//!
//! Chromium runs as root here, with a fresh profile, and without the
//! background networking that this machine's closed network refuses.
//! Must never: leave a chromedriver or a chromium behind (both are ended
//! on drop, by pid), or skip silently: a missing chromium is a loud skip
//! outside CI and a failure under `CI=true`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::daemon::Daemon;
use crate::{HarnessError, free_loopback_port};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The window the screenshots show.
const WINDOW: &str = "--window-size=1280,1000";

/// A running chromedriver with one Chromium session. Call `close` at the
/// end of a test; dropping it ends both processes anyway.
#[derive(Debug)]
pub struct Browser {
    client: Option<Client>,
    driver: Daemon,
    /// Chromium's profile: its processes are found by this path on drop.
    profile: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

fn browser_error(what: &'static str) -> impl FnOnce(fantoccini::error::CmdError) -> HarnessError {
    move |source| HarnessError::Browser {
        what,
        source: Box::new(source),
    }
}

impl Browser {
    /// Starts chromedriver and a Chromium session, or returns `None` (after
    /// saying so on stderr) when Chromium is not installed and `CI` is not
    /// `true`; under CI a missing Chromium is an error.
    pub async fn start_or_skip(test: &str) -> Result<Option<Self>, HarnessError> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !Path::new(p).is_file())
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "{} missing: install Debian's chromium and chromium-driver (scripts/test does)",
                missing.join(" and ")
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                return Err(HarnessError::Fixture(format!("{test}: {why}")));
            }
            eprintln!("SKIPPED {test}: {why}");
            return Ok(None);
        }
        Self::start().await.map(Some)
    }

    async fn start() -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-chromedriver-")
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let profile = tempfile::Builder::new()
            .prefix("lockstep-chromium-")
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let port = free_loopback_port()?;
        let mut driver = Daemon::system(
            "chromedriver",
            PathBuf::from(CHROMEDRIVER),
            vec![
                OsString::from(format!("--port={port}")),
                OsString::from("--allowed-ips=127.0.0.1"),
            ],
            dir.path().join("chromedriver.log"),
        );
        driver
            .start(START_TIMEOUT, || async move {
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok())
            })
            .await?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--no-default-browser-check",
                    WINDOW,
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .map_err(|source| HarnessError::Browser {
                what: "cannot open a Chromium session through chromedriver",
                source: Box::new(source),
            })?;
        Ok(Self {
            client: Some(client),
            driver,
            profile,
            _dir: dir,
        })
    }

    fn client(&self) -> Result<&Client, HarnessError> {
        self.client
            .as_ref()
            .ok_or_else(|| HarnessError::Fixture("the browser session is closed".to_owned()))
    }

    pub async fn goto(&self, url: &str) -> Result<(), HarnessError> {
        self.client()?
            .goto(url)
            .await
            .map_err(browser_error("cannot open the page"))
    }

    /// The visible text of the first element `css` selects, or `None` when
    /// nothing matches.
    pub async fn text(&self, css: &str) -> Result<Option<String>, HarnessError> {
        self.read(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            vec![css.into()],
        )
        .await
    }

    /// An attribute of the first element `css` selects.
    pub async fn attribute(&self, css: &str, name: &str) -> Result<Option<String>, HarnessError> {
        self.read(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            vec![css.into(), name.into()],
        )
        .await
    }

    /// Finds and reads in one script, so the page cannot replace the
    /// element in between: finding it by WebDriver and then reading it
    /// failed as a stale element when the grid re-rendered on its poll
    /// between the two (seen once in CI: "cannot read an element's text").
    async fn read(
        &self,
        script: &str,
        args: Vec<serde_json::Value>,
    ) -> Result<Option<String>, HarnessError> {
        let value = self
            .client()?
            .execute(script, args)
            .await
            .map_err(browser_error("cannot read the page"))?;
        match value {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(text) => Ok(Some(text)),
            other => Err(HarnessError::Fixture(format!(
                "reading the page gave {other} where text or null was expected"
            ))),
        }
    }

    /// Types `text` into the first element `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<(), HarnessError> {
        self.act_on(css, "cannot type into a field", |element| async move {
            element.send_keys(text).await
        })
        .await
    }

    /// Clicks the first element `css` selects.
    pub async fn click(&self, css: &str) -> Result<(), HarnessError> {
        self.act_on(css, "cannot click an element", |element| async move {
            element.click().await
        })
        .await
    }

    /// Finds the element and acts on it, finding it again when the page
    /// replaced it in between (a WebDriver action needs an element handle,
    /// so find and act cannot be one script as reads are; a click failed
    /// once in CI as a stale element when the history re-rendered).
    async fn act_on<F, Fut>(
        &self,
        css: &str,
        what: &'static str,
        act: F,
    ) -> Result<(), HarnessError>
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        const ATTEMPTS: usize = 5;
        let mut attempt = 1;
        loop {
            let element = self
                .client()?
                .find(Locator::Css(css))
                .await
                .map_err(browser_error("cannot find the element to act on"))?;
            match act(element).await {
                Err(stale) if stale.is_stale_element_reference() && attempt < ATTEMPTS => {
                    attempt += 1;
                }
                done => return done.map_err(browser_error(what)),
            }
        }
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn execute(&self, script: &str) -> Result<serde_json::Value, HarnessError> {
        self.execute_with(script, Vec::new()).await
    }

    /// Runs `script` with `arguments` and returns what it returns.
    pub async fn execute_with(
        &self,
        script: &str,
        arguments: Vec<serde_json::Value>,
    ) -> Result<serde_json::Value, HarnessError> {
        self.client()?
            .execute(script, arguments)
            .await
            .map_err(browser_error("cannot run a script in the page"))
    }

    /// Writes a PNG of the window to `path` (its directory is created).
    pub async fn screenshot(&self, path: &Path) -> Result<(), HarnessError> {
        let png = self
            .client()?
            .screenshot()
            .await
            .map_err(browser_error("cannot take a screenshot"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(HarnessError::TempDir)?;
        }
        std::fs::write(path, png).map_err(HarnessError::TempDir)
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(mut self) -> Result<(), HarnessError> {
        if let Some(client) = self.client.take() {
            client
                .close()
                .await
                .map_err(browser_error("cannot end the Chromium session"))?;
        }
        self.driver.kill();
        Ok(())
    }

    /// Where a test writes its screenshots: `target/web-view/` of the
    /// target dir the test binary was built in.
    pub fn screenshot_dir() -> Result<PathBuf, HarnessError> {
        let exe = std::env::current_exe().map_err(HarnessError::TempDir)?;
        exe.ancestors()
            .nth(3)
            .map(|target| target.join("web-view"))
            .ok_or_else(|| {
                HarnessError::Fixture(format!(
                    "cannot find the target dir above {}",
                    exe.display()
                ))
            })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.driver.kill();
        // A session not closed leaves Chromium running: end exactly the
        // processes started with this fixture's profile.
        for pid in pids_with_arg(&format!(
            "--user-data-dir={}",
            self.profile.path().display()
        )) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Pids whose command line has `arg` as one of its arguments.
fn pids_with_arg(arg: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

//! The operators' console in a real headless browser (Chromium through
//! chromedriver, driven by `fantoccini`) against the whole shop: sign in with
//! a token, see the projections, rebuild one and see it finish, open an
//! order's stream and its state at a version, tell the order's story, replay a
//! dead letter and see it leave the list, watch the live chart. A screenshot
//! of each page is kept in `target/<profile>/console-screenshots/`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use system_tests::binaries;
use system_tests::system::{Settings, System};

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} must be installed (apt-get install chromium chromium-driver): {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while reqwest::get(format!("{url}/status")).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    // fantoccini's rustls needs a process-wide crypto provider (chromedriver is plain HTTP anyway).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                      "--window-size=1280,1000"]});
    if let Ok(binary) = std::env::var("CHROMIUM") {
        options["binary"] = json!(binary);
    } else if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    ClientBuilder::rustls().unwrap().capabilities(capabilities).connect(&driver.url).await.expect("a browser session")
}

/// Waits (up to 60 s) until `check` holds.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(60), "the console never showed {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn texts(browser: &Client, css: &str) -> Vec<String> {
    let mut found = Vec::new();
    for element in browser.find_all(Locator::Css(css)).await.unwrap_or_default() {
        found.push(element.text().await.unwrap_or_default());
    }
    found
}

async fn fill(browser: &Client, css: &str, text: &str) {
    let field = browser.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn click(browser: &Client, css: &str) {
    browser.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
}

async fn screenshot(browser: &Client, name: &str) {
    let dir = binaries::dir().join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, browser.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_rebuilds_reads_a_story_and_replays_a_dead_letter() {
    let system = System::start(Settings::default()).await;
    let client = system.client.clone();
    let order_id = client.confirmed_order("SKU-C", 10, 1, 700).await;
    system.dead_letter_last_order_placed("inventory-deadline-OrderPlaced", "a test's dead letter").await;

    let driver = Driver::start().await;
    let browser = browser(&driver).await;
    let console = format!("{}/console/", system.client.query);
    browser.goto(&console).await.unwrap();
    // A bad token is refused on the sign-in page.
    fill(&browser, "#token", "not-a-token").await;
    click(&browser, "#sign-in-button").await;
    until("the refusal", async || texts(&browser, "#sign-in-error").await.iter().any(|t| t.contains("not valid")))
        .await;
    fill(&browser, "#token", &system.client.token).await;
    click(&browser, "#sign-in-button").await;

    // Projections, and a rebuild that finishes.
    until("four projections", async || texts(&browser, "#projection-rows tr").await.len() == 4).await;
    let names = texts(&browser, "#projection-rows tr td:first-child").await;
    assert_eq!(names, ["inventory", "orders", "payments", "story"]);
    screenshot(&browser, "projections").await;
    click(&browser, "#projection-rows tr[data-name='orders'] button").await;
    until("the rebuild done", async || {
        texts(&browser, "#projection-rows tr[data-name='orders'] td.rebuild")
            .await
            .iter()
            .any(|t| t.starts_with("done"))
    })
    .await;
    screenshot(&browser, "projections-rebuilt").await;

    // The order's stream, and its state after its first event.
    browser.goto(&format!("{console}#/streams")).await.unwrap();
    fill(&browser, "#stream-id", &format!("order-{order_id}")).await;
    click(&browser, "#stream-form button").await;
    until("the order's events", async || texts(&browser, "#stream-rows tr").await.len() >= 4).await;
    click(&browser, "#stream-rows tr:first-child button").await;
    until("the state at version 1", async || {
        texts(&browser, "#stream-state").await.iter().any(|t| t.contains("\"status\": \"pending\""))
    })
    .await;
    screenshot(&browser, "streams").await;

    // The order's story.
    browser.goto(&format!("{console}#/story")).await.unwrap();
    fill(&browser, "#story-order", &order_id).await;
    click(&browser, "#story-form button").await;
    until("the story", async || {
        let steps = texts(&browser, "#story-steps li").await;
        steps.first().is_some_and(|s| s.starts_with("OrderPlaced"))
            && steps.iter().any(|s| s.starts_with("OrderConfirmed"))
    })
    .await;
    assert!(
        texts(&browser, "#story-dead-letters").await[0].contains("a test's dead letter"),
        "the story names its dead letter"
    );
    screenshot(&browser, "story").await;

    // The dead letter: inspected, replayed, gone.
    browser.goto(&format!("{console}#/dead-letters")).await.unwrap();
    until("the dead letter", async || texts(&browser, "#dead-letter-rows tr").await.len() == 1).await;
    click(&browser, "#dead-letter-rows tr button").await;
    until("its body", async || texts(&browser, "#dead-letter-body").await.iter().any(|t| t.contains("OrderPlaced")))
        .await;
    screenshot(&browser, "dead-letter").await;
    click(&browser, "#dead-letter-replay").await;
    until("the list empty", async || texts(&browser, "#dead-letter-rows tr").await.is_empty()).await;
    screenshot(&browser, "dead-letters-replayed").await;

    // The live chart draws once it has two samples.
    browser.goto(&format!("{console}#/live")).await.unwrap();
    until("the chart's legend", async || texts(&browser, "#chart-legend").await.iter().any(|t| t.contains("events/s")))
        .await;
    screenshot(&browser, "live").await;

    browser.close().await.unwrap();
    system.stop(false);
}

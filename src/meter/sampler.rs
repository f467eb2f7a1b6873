//! The meter's own light thread: samples every GPU (NVML) and this process's
//! resident memory at a fixed rate (default 4 Hz), keeps the last few minutes,
//! and carries load / generate / release markers for the plot and for export.

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{process_memory, GpuMemory, GpuMeter};

/// Default sampling interval (4 Hz).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);
/// Default history length: five minutes at 4 Hz.
pub const DEFAULT_CAPACITY: usize = 5 * 60 * 4;

/// One reading of every figure the meter knows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemorySnapshot {
    /// Seconds since the meter started.
    pub t: f64,
    /// Wall-clock milliseconds since the Unix epoch (for exported timelines).
    pub unix_ms: u64,
    pub gpus: Vec<GpuMemory>,
    /// This process's resident memory; `None` where the OS does not say.
    pub rss_bytes: Option<u64>,
}

/// What happened at a moment, drawn on the plot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerKind {
    Load,
    Generate,
    Release,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Marker {
    pub t: f64,
    pub kind: MarkerKind,
    pub label: String,
}

/// The last `capacity` snapshots and the markers inside that window.
#[derive(Debug, Clone)]
pub struct MemoryHistory {
    capacity: usize,
    pub samples: VecDeque<MemorySnapshot>,
    pub markers: VecDeque<Marker>,
    /// Why GPU figures are missing, if they are.
    pub gpu_unavailable: Option<String>,
}

impl MemoryHistory {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            samples: VecDeque::new(),
            markers: VecDeque::new(),
            gpu_unavailable: None,
        }
    }

    pub fn push(&mut self, s: MemorySnapshot) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
        let oldest = self.samples.front().map_or(0.0, |s| s.t);
        while self.markers.front().is_some_and(|m| m.t < oldest) {
            self.markers.pop_front();
        }
    }

    pub fn latest(&self) -> Option<&MemorySnapshot> {
        self.samples.back()
    }

    /// CSV (quoted by the `csv` crate, so commas and quotes in marker labels
    /// stay in their column): one row per sample and GPU, then one per marker:
    /// `row,t,unix_ms,gpu,used_mib,total_mib,process_mib,rss_mib,marker,label`.
    pub fn to_csv(&self) -> String {
        let mib = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut rows: Vec<[String; 10]> = vec![[
            "row",
            "t",
            "unix_ms",
            "gpu",
            "used_mib",
            "total_mib",
            "process_mib",
            "rss_mib",
            "marker",
            "label",
        ]
        .map(String::from)];
        for s in &self.samples {
            let rss = s.rss_bytes.map(mib).unwrap_or_default();
            let t = format!("{:.3}", s.t);
            if s.gpus.is_empty() {
                rows.push([
                    "sample".into(),
                    t.clone(),
                    s.unix_ms.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    rss.clone(),
                    String::new(),
                    String::new(),
                ]);
            }
            for g in &s.gpus {
                rows.push([
                    "sample".into(),
                    t.clone(),
                    s.unix_ms.to_string(),
                    g.index.to_string(),
                    mib(g.used_bytes),
                    mib(g.total_bytes),
                    g.process_bytes.map(mib).unwrap_or_default(),
                    rss.clone(),
                    String::new(),
                    String::new(),
                ]);
            }
        }
        for m in &self.markers {
            let kind = serde_json::to_value(m.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            rows.push([
                "marker".into(),
                format!("{:.3}", m.t),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                kind,
                m.label.clone(),
            ]);
        }
        for row in &rows {
            // Writing to a Vec cannot fail.
            let _ = w.write_record(row);
        }
        w.into_inner()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// JSON lines: `{"sample": ...}` and `{"marker": ...}` in time order.
    pub fn to_json_lines(&self) -> String {
        let mut rows: Vec<(f64, String)> = self
            .samples
            .iter()
            .map(|s| (s.t, serde_json::json!({ "sample": s }).to_string()))
            .chain(
                self.markers
                    .iter()
                    .map(|m| (m.t, serde_json::json!({ "marker": m }).to_string())),
            )
            .collect();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        rows.into_iter().map(|(_, r)| r + "\n").collect()
    }
}

enum Control {
    Mark(MarkerKind, String),
    Stop,
}

/// The sampler thread and the shared history it fills. Dropping it stops and joins the thread.
pub struct MemorySampler {
    history: Arc<Mutex<MemoryHistory>>,
    control: Sender<Control>,
    started: Instant,
    thread: Option<JoinHandle<()>>,
}

impl MemorySampler {
    /// Starts sampling every `interval`; `on_sample` runs after each sample (wake the UI there).
    pub fn spawn(
        interval: Duration,
        capacity: usize,
        on_sample: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let history = Arc::new(Mutex::new(MemoryHistory::new(capacity)));
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        let shared = Arc::clone(&history);
        let thread = std::thread::Builder::new()
            .name("versifier-meter".into())
            .spawn(move || {
                let gpu = GpuMeter::open();
                if let Ok(mut h) = shared.lock() {
                    h.gpu_unavailable = gpu.unavailable_reason().map(String::from);
                }
                loop {
                    let snapshot = MemorySnapshot {
                        t: started.elapsed().as_secs_f64(),
                        unix_ms: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                        gpus: (0..gpu.device_count())
                            .filter_map(|i| gpu.read(i))
                            .collect(),
                        rss_bytes: process_memory().map(|m| m.rss_bytes),
                    };
                    if let Ok(mut h) = shared.lock() {
                        h.push(snapshot);
                    }
                    on_sample();
                    // Wait for the next tick, handling markers as they come.
                    let next = Instant::now() + interval;
                    loop {
                        let left = next.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(Control::Mark(kind, label)) => {
                                if let Ok(mut h) = shared.lock() {
                                    h.markers.push_back(Marker {
                                        t: started.elapsed().as_secs_f64(),
                                        kind,
                                        label,
                                    });
                                }
                            }
                            Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                }
            })?;
        Ok(Self {
            history,
            control: tx,
            started,
            thread: Some(thread),
        })
    }

    /// Records a marker at the current moment.
    pub fn mark(&self, kind: MarkerKind, label: impl Into<String>) {
        let _ = self.control.send(Control::Mark(kind, label.into()));
    }

    /// The history, locked for reading (hold it briefly).
    pub fn history(&self) -> MutexGuard<'_, MemoryHistory> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds since the sampler started (the history's time base).
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(t: f64) -> MemorySnapshot {
        MemorySnapshot {
            t,
            unix_ms: 1000 + (t * 1000.0) as u64,
            gpus: vec![GpuMemory {
                index: 0,
                name: "GPU".into(),
                total_bytes: 80 << 30,
                used_bytes: 1 << 30,
                free_bytes: 79 << 30,
                process_bytes: Some(512 << 20),
            }],
            rss_bytes: Some(100 << 20),
        }
    }

    #[test]
    fn history_keeps_the_last_samples_and_drops_old_markers() {
        let mut h = MemoryHistory::new(3);
        h.markers.push_back(Marker {
            t: 0.5,
            kind: MarkerKind::Load,
            label: "load".into(),
        });
        for i in 0..5 {
            h.push(snap(i as f64));
        }
        assert_eq!(h.samples.len(), 3);
        assert_eq!(h.samples.front().unwrap().t, 2.0);
        assert!(
            h.markers.is_empty(),
            "a marker older than the window is dropped"
        );
    }

    #[test]
    fn exports_csv_and_json_lines() {
        let mut h = MemoryHistory::new(10);
        h.push(snap(0.0));
        h.markers.push_back(Marker {
            t: 0.1,
            kind: MarkerKind::Release,
            label: "returned 512 MiB".into(),
        });
        h.push(snap(0.25));
        h.markers.push_back(Marker {
            t: 0.2,
            kind: MarkerKind::Error,
            label: "out of memory: needs 696 MiB, 298 free, \"cuda:0\"".into(),
        });
        let csv = h.to_csv();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("row,t,unix_ms,gpu,used_mib,total_mib,process_mib,rss_mib,marker,label")
        );
        assert_eq!(
            lines.next(),
            Some("sample,0.000,1000,0,1024.0,81920.0,512.0,100.0,,")
        );
        assert!(
            csv.contains("marker,0.100,,,,,,,release,returned 512 MiB"),
            "{csv}"
        );
        // A label with commas and quotes stays one field when read back.
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let labels: Vec<String> = reader
            .records()
            .map(|r| r.unwrap()[9].to_string())
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            labels[1],
            "out of memory: needs 696 MiB, 298 free, \"cuda:0\""
        );
        assert!(reader.records().all(|r| r.unwrap().len() == 10));
        let jl: Vec<serde_json::Value> = h
            .to_json_lines()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(jl.len(), 4);
        assert!(jl[1].get("marker").is_some(), "in time order");
    }

    #[test]
    fn sampler_thread_samples_marks_and_joins() {
        let (tx, rx) = mpsc::channel();
        let sampler = MemorySampler::spawn(Duration::from_millis(5), 100, move || {
            let _ = tx.send(());
        })
        .unwrap();
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(10)).expect("a sample");
        }
        sampler.mark(MarkerKind::Generate, "generate");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("another sample");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("another sample");
        {
            let h = sampler.history();
            assert!(h.samples.len() >= 3);
            assert!(h.samples.iter().all(|s| s.rss_bytes.is_some()));
            assert_eq!(h.markers.len(), 1);
            // Without NVML (no driver here), GPU figures are absent with a reason, never guessed.
            if h.samples.iter().all(|s| s.gpus.is_empty()) {
                assert!(h.gpu_unavailable.is_some());
            }
        }
        drop(sampler); // joins
    }
}

//! The deterministic runtime: one thread, virtual time.

/// An actix System on a current-thread tokio runtime whose clock is paused: time advances only
/// when every task is idle, straight to the next timer, so a run is a pure function of its seed
/// and takes no wall-clock time waiting.
pub fn deterministic_system() -> actix::SystemRunner {
    actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime builds")
    })
}

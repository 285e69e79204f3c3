//! Control messages (BEHAVIOUR.md §7.3): Bootstrap is answered with known points,
//! Advertise registers points, swap messages go to the `swap` module, each kind under a
//! per-peer rate (the `governor` crate's GCRA, driven by the time the policy is given: no
//! clock is read).

use super::config::Rate;
use super::{Action, ConnectionId, ConnectionPolicy, ControlKind, ControlMessage, PolicyEvent};
use crate::pool::{Medium, P2pEvent, PeerMeta, Time};
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A clock that reads the `now` last given to the policy (nanoseconds since the Unix
/// epoch, saturating), so rate decisions are as deterministic as the rest of the core.
#[derive(Debug, Clone, Default)]
pub(super) struct InputClock(Arc<AtomicU64>);

impl InputClock {
    pub(super) fn set(&self, now: Time) {
        let nanos = u64::try_from(now.as_unix().as_nanos()).unwrap_or(u64::MAX);
        // Never backwards: the limiter's arithmetic assumes a monotonic clock.
        self.0.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The last `now` given, as pool time.
    pub(super) fn time(&self) -> Time {
        Time::from_unix(Duration::from_nanos(self.0.load(Ordering::Relaxed)))
    }
}

/// The rate limiters' clock stops at 2^63 ns after the epoch (the year 2262): the
/// limiter adds a refill window (at most [`MAX_RATE_WINDOW`](super::MAX_RATE_WINDOW),
/// checked by validation) to the time in `u64` nanoseconds, which must not overflow
/// however far the time given moves. Past it, allowances no longer refill.
const LIMITER_CLOCK_END: u64 = u64::MAX / 2;

impl Clock for InputClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed).min(LIMITER_CLOCK_END))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, InputClock, NoOpMiddleware<Duration>>;

/// One connection's limits on Bootstrap and Advertise.
pub(super) struct ControlLimits {
    bootstrap: Limiter,
    advertise: Limiter,
    swap: Limiter,
}

impl fmt::Debug for ControlLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlLimits").finish_non_exhaustive()
    }
}

fn quota(rate: Rate) -> Quota {
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    // A zero period is refused by validation; fall back to one per second regardless.
    Quota::with_period(rate.period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl ControlLimits {
    pub(super) fn new(clock: &InputClock, bootstrap: Rate, advertise: Rate, swap: Rate) -> Self {
        ControlLimits {
            bootstrap: RateLimiter::direct_with_clock(quota(bootstrap), clock.clone()),
            advertise: RateLimiter::direct_with_clock(quota(advertise), clock.clone()),
            swap: RateLimiter::direct_with_clock(quota(swap), clock.clone()),
        }
    }

    /// Whether one more swap message (request or ack) fits the rate now.
    pub(super) fn swap(&self) -> bool {
        self.swap.check().is_ok()
    }

    /// Whether one more Bootstrap fits the rate now (the clock is set by the caller).
    pub(super) fn bootstrap(&self) -> bool {
        self.bootstrap.check().is_ok()
    }

    /// Whether one more Advertise fits the rate now.
    pub(super) fn advertise(&self) -> bool {
        self.advertise.check().is_ok()
    }
}

impl<M: PeerMeta + Send + 'static> ConnectionPolicy<M> {
    pub(super) fn on_control(&mut self, now: Time, id: ConnectionId, message: ControlMessage) {
        let Some(conn) = self.connections.get(&id) else {
            return;
        };
        let peer_id = conn.view.peer_id;
        let except = conn.view.point;
        let private = conn.view.private;
        let kind = message.kind();
        let swap = matches!(kind, ControlKind::SwapRequest | ControlKind::SwapAck);
        // Swap is independent of peer discovery (BEHAVIOUR.md §7.4).
        if !swap && !self.config.peer_discovery {
            return;
        }
        let allowed = match kind {
            ControlKind::Bootstrap => conn.limits.bootstrap(),
            ControlKind::Advertise => conn.limits.advertise(),
            _ => conn.limits.swap(),
        };
        if !allowed {
            self.emit(PolicyEvent::ControlThrottled { peer_id, kind });
            return;
        }
        match message {
            ControlMessage::Bootstrap => {
                // A private node's Bootstrap is not answered (BEHAVIOUR.md §7.3).
                if private {
                    return;
                }
                self.pool
                    .push_event(P2pEvent::BootstrapReceived { source: peer_id });
                let points = self.shareable_points(except);
                if !points.is_empty() {
                    self.actions.push_back(Action::Send {
                        id,
                        message: ControlMessage::Advertise(points.clone()),
                    });
                    self.pool
                        .push_event(P2pEvent::AdvertiseSent { source: peer_id });
                }
                self.emit(PolicyEvent::BootstrapAnswered { peer_id, points });
            }
            ControlMessage::Advertise(points) => {
                self.pool
                    .push_event(P2pEvent::AdvertiseReceived { source: peer_id });
                self.pool.register_list_of_new_points(
                    now,
                    Medium::Advertise,
                    Some(peer_id),
                    points
                        .iter()
                        .copied()
                        .take(crate::message::MAX_ADVERTISE_POINTS),
                );
                self.emit(PolicyEvent::AdvertiseReceived { peer_id, points });
            }
            ControlMessage::SwapRequest(point, peer) => {
                self.on_swap_request(now, id, peer_id, point, peer)
            }
            ControlMessage::SwapAck(point, peer) => self.on_swap_ack(now, id, peer_id, point, peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_time_given() {
        let clock = InputClock::default();
        clock.set(Time::from_secs(1000));
        let rate = Rate {
            period: Duration::from_secs(1),
            burst: 3,
        };
        let limits = ControlLimits::new(&clock, rate, rate, rate);
        // The burst, then nothing until time moves.
        assert!((0..3).all(|_| limits.bootstrap()));
        assert!(!limits.bootstrap());
        // The other kind has its own allowance.
        assert!(limits.advertise());
        clock.set(Time::from_unix(Duration::from_millis(1_000_999)));
        assert!(!limits.bootstrap());
        clock.set(Time::from_secs(1001));
        assert!(limits.bootstrap());
        assert!(!limits.bootstrap());
        // Time never runs backwards for the limiter.
        clock.set(Time::from_secs(5));
        assert!(!limits.bootstrap());
        clock.set(Time::from_secs(1010));
        assert!((0..3).all(|_| limits.bootstrap()));
        assert!(!limits.bootstrap());
    }
}

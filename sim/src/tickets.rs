//! The load tickets of a simulated router's requests, by request index, and the hits it
//! predicted for each: what the engine's routers share.

use cache_aware_router::LoadTicket;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Default)]
pub struct Tickets {
    open: HashMap<usize, LoadTicket>,
    /// Per request, in routing order: the leading blocks the router expected its pick to hold.
    predicted: Vec<u64>,
}

impl Tickets {
    /// Holds the ticket of the next request, which the router expected to hit
    /// `predicted_blocks` leading blocks; returns the worker's index.
    pub fn hold(&mut self, ticket: LoadTicket, predicted_blocks: u64) -> usize {
        let index = ticket.index();
        self.open.insert(self.predicted.len(), ticket);
        self.predicted.push(predicted_blocks);
        index
    }

    /// Reports request `request`'s first token, `ttft_us` after it arrived; the TTFT its
    /// ticket estimated, if any.
    pub fn first_token(&self, request: usize, ttft_us: f64) -> Option<f64> {
        let ticket = self.open.get(&request)?;
        ticket.first_token_after(Duration::from_secs_f64(ttft_us / 1e6));
        ticket.estimated_ttft().map(|d| d.as_secs_f64() * 1e6)
    }

    /// Request `request` finished: its ticket gives the load back.
    pub fn complete(&mut self, request: usize) {
        self.open.remove(&request);
    }

    pub fn predicted(&self, request: usize) -> Option<u64> {
        self.predicted.get(request).copied()
    }
}

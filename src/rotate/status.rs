//! `kiln status`: what the Secrets hold and what rotation will do next.

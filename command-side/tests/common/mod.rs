pub mod nats;
pub mod shop;

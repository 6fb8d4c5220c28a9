//! Inventory commands: `ReceiveStock`.

use domain::inventory::{Inventory, InventoryCommand};
use domain::rules::{self, Problems};
use domain::Aggregate;

use crate::commands;
use crate::outcome::{CommandError, Done, Refusal, StockAccepted};
use crate::{Application, Request, Start};

/// Receive `quantity` units of `sku` (the item is created on its first receipt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveStock {
    pub sku: String,
    pub quantity: i64,
}

impl Application {
    pub async fn receive_stock(
        &self,
        request: &Request,
        receipt: ReceiveStock,
    ) -> Result<Done<StockAccepted>, CommandError> {
        // The sku names the stream: it is checked before it is used as one.
        let mut problems = Problems::default();
        rules::check_sku(&mut problems, "sku", &receipt.sku);
        if !problems.0.is_empty() {
            return Err(Refusal::Invalid { errors: problems.0 }.into());
        }
        let run = match self.start(request).await? {
            Start::Run(run) => run,
            Start::Saved(saved) => return Done::from_saved(saved),
        };
        let ReceiveStock { sku, quantity } = receipt;
        let stream_id = Inventory::stream_id(&sku);
        let command = InventoryCommand::Receive { sku: sku.clone(), quantity };
        let outcome = commands::execute::<Inventory>(&**self.store(), &stream_id, &run.invocation, command)
            .await
            .map(|appended| StockAccepted { sku, version: appended.stream_version, position: appended.position })
            .map_err(CommandError::from);
        self.finish(request, run.lease, outcome).await
    }
}

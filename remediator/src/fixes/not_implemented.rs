//! The placeholder of a fix not built yet: it plans nothing and fails clearly, never succeeds.

use dmsguard_pipeline::config::FixName;

use super::{Fix, FixContext, FixError, Outcome, Plan};
use crate::ledger::Job;

/// Fails every job of its fix with "not implemented yet".
pub struct NotImplementedFix(pub FixName);

#[async_trait::async_trait]
impl Fix for NotImplementedFix {
    fn name(&self) -> FixName {
        self.0
    }

    async fn plan(&self, _ctx: &FixContext, _job: &Job) -> Result<Plan, FixError> {
        let mut plan = Plan::new(format!("Fix `{}` is not implemented yet.", self.0));
        plan.step("Nothing: this fix is not implemented yet; the job fails.");
        Ok(plan)
    }

    async fn execute(
        &self,
        _ctx: &FixContext,
        _job: &Job,
        _plan: &Plan,
    ) -> Result<Outcome, FixError> {
        Err(FixError::NotImplemented(self.0))
    }
}

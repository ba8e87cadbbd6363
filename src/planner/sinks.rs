//! Sink statements: `CREATE SINK name FROM relation WITH (connector = 'kafka', ...)`,
//! `DROP SINK`, `SHOW SINKS`. A sink is recorded in the catalog file and started at once and
//! at every server start ([`crate::connectors::sink`]); a view a sink reads cannot be dropped
//! before the sink.

use datafusion::sql::sqlparser::ast::ObjectName;

use super::views::name_of;
use super::{Engine, Output};
use crate::catalog::QualifiedName;
use crate::connectors::sink::{KafkaSink, SinkInput, SinkProgress};
use crate::error::{Error, Result};
use crate::parser::extensions::CreateSink;
use crate::storage::{Relation, SinkDef};

fn command(tag: &str) -> Output {
    Output::Command {
        tag: tag.to_string(),
    }
}

impl Engine {
    /// What `from` names: a materialized view, or a stream.
    async fn sink_input(&self, from: &QualifiedName) -> Result<SinkInput> {
        if let Ok(view) = self.catalog.view(from) {
            return Ok(SinkInput::View(view));
        }
        match self.catalog.relation(from).await? {
            Relation::Stream(stream) => Ok(SinkInput::Stream(stream)),
            Relation::Table(_) => Err(Error::Unsupported(format!(
                "a sink from table \"{}\" (sinks read materialized views and streams; a view \
                 over the table, CREATE MATERIALIZED VIEW v AS SELECT * FROM {}, can be sunk)",
                from.name, from.name
            ))),
        }
    }

    fn start_sink(&self, def: &SinkDef, input: SinkInput) -> Result<()> {
        let schema = match &input {
            SinkInput::View(view) => std::sync::Arc::clone(&view.schema),
            SinkInput::Stream(stream) => stream.schema(),
        };
        let name = format!("{}.{}", def.schema_name, def.name);
        let sink = KafkaSink::new(&name, &def.options, &schema)?;
        self.catalog.sinks().start(
            def.id,
            name,
            def.from.clone(),
            sink,
            input,
            SinkProgress::new(self.catalog.storage().sink_position_path(def.id)),
            def.start,
        );
        Ok(())
    }

    pub async fn create_sink(&self, create: &CreateSink) -> Result<Output> {
        let name = name_of(&create.name)?;
        let from = name_of(&create.from)?;
        let exists = self
            .catalog
            .storage()
            .sinks()
            .iter()
            .any(|s| s.schema_name == name.schema && s.name == name.name);
        if exists {
            if create.if_not_exists {
                return Ok(command("CREATE SINK"));
            }
            return Err(Error::AlreadyExists {
                kind: "sink",
                name: name.name,
            });
        }
        let input = self.sink_input(&from).await?;
        let schema = match &input {
            SinkInput::View(view) => std::sync::Arc::clone(&view.schema),
            SinkInput::Stream(stream) => stream.schema(),
        };
        // Checked before anything is recorded.
        KafkaSink::new(&name.to_string(), &create.options, &schema)?;
        // A stream's sink sends the rows appended from now on: its start is fixed before the
        // statement returns, not when its task gets going.
        let start = match &input {
            SinkInput::Stream(stream) => Some(stream.appended_records()),
            SinkInput::View(_) => None,
        };
        let def = self.catalog.storage().create_sink(SinkDef {
            id: 0,
            schema_name: name.schema,
            name: name.name,
            from: from.to_string(),
            options: create.options.clone(),
            start,
        })?;
        self.start_sink(&def, input)?;
        Ok(command("CREATE SINK"))
    }

    pub async fn drop_sinks(&self, names: &[ObjectName], if_exists: bool) -> Result<Output> {
        for name in names {
            let name = name_of(name)?;
            let def = self
                .catalog
                .storage()
                .sinks()
                .into_iter()
                .find(|s| s.schema_name == name.schema && s.name == name.name);
            match def {
                Some(def) => {
                    self.catalog.sinks().stop(def.id).await;
                    if let Some((schema, name)) = def.from.split_once('.') {
                        let from = QualifiedName {
                            schema: schema.to_string(),
                            name: name.to_string(),
                        };
                        if let Ok(Relation::Stream(stream)) = self.catalog.relation(&from).await {
                            stream.release_log_holds(def.id);
                        }
                    }
                    self.catalog.storage().drop_sink(def.id)?;
                    SinkProgress::new(self.catalog.storage().sink_position_path(def.id)).remove();
                }
                None if if_exists => {}
                None => {
                    return Err(Error::NotFound {
                        kind: "sink",
                        name: name.name,
                    });
                }
            }
        }
        Ok(command("DROP SINK"))
    }

    pub fn show_sinks(&self) -> Result<Output> {
        let batch = self.catalog.sinks().system_batch()?;
        Ok(Output::Rows {
            schema: batch.schema(),
            batches: vec![batch],
            verb: "SHOW",
        })
    }

    /// Start every stored sink (at server start, after the views).
    pub async fn start_stored_sinks(&self) {
        for def in self.catalog.storage().sinks() {
            let started = match def.from.split_once('.') {
                Some((schema, name)) => {
                    let from = QualifiedName {
                        schema: schema.to_string(),
                        name: name.to_string(),
                    };
                    match self.sink_input(&from).await {
                        Ok(input) => self.start_sink(&def, input),
                        Err(e) => Err(e),
                    }
                }
                None => Err(Error::Internal(format!("sink source \"{}\"", def.from))),
            };
            if let Err(e) = started {
                tracing::error!(sink = %def.name, error = %e, "stored sink could not be started");
            }
        }
    }

    /// The sinks that read `relation` (it cannot be dropped before them).
    pub(super) fn sinks_reading(&self, relation: &QualifiedName) -> Vec<String> {
        let qualified = relation.to_string();
        self.catalog
            .storage()
            .sinks()
            .into_iter()
            .filter(|s| s.from == qualified)
            .map(|s| s.name)
            .collect()
    }
}

-- The three Nexmark streams, fed by the built-in generator (connector = 'nexmark'). The same
-- options on all three describe one auction site: the generator is deterministic, so person,
-- auction and bid ids agree across the streams. `events` counts events of all types (1 person,
-- 3 auctions and 46 bids in every 50); `paced = false` generates as fast as storage takes it;
-- `shuffle` delivers each chunk's rows (100 ms of event time at the default rate of 10,000
-- events/s) out of order, well inside the 4-second watermark bound.
CREATE STREAM person (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
WITH (connector = 'nexmark', event_type = 'person', events = 1000000, paced = false,
      start_time = '2026-01-01 00:00:00+00');
CREATE STREAM auction (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
WITH (connector = 'nexmark', event_type = 'auction', events = 1000000, paced = false,
      start_time = '2026-01-01 00:00:00+00');
CREATE STREAM bid (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
WITH (connector = 'nexmark', event_type = 'bid', events = 1000000, paced = false,
      start_time = '2026-01-01 00:00:00+00', shuffle = true);

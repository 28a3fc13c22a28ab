-- The schema of a database made by version 2 of the schema (newsletter/db.py MIGRATIONS[:2]), as
-- SQLite stored it: the starting point of the migration tests.
CREATE TABLE schema_version (
	version INTEGER NOT NULL
);
CREATE TABLE lists (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	description TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
CREATE TABLE subscribers (
	id INTEGER NOT NULL, 
	email VARCHAR(320) NOT NULL, 
	email_key VARCHAR(320) NOT NULL, 
	name VARCHAR(500), 
	attributes JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (email_key)
);
CREATE TABLE sync_state (
	kind VARCHAR(40) NOT NULL, 
	last_created INTEGER NOT NULL, 
	PRIMARY KEY (kind)
);
CREATE TABLE webhook_events (
	sg_event_id VARCHAR(100) NOT NULL, 
	received_at DATETIME NOT NULL, 
	PRIMARY KEY (sg_event_id)
);
CREATE INDEX ix_webhook_events_received ON webhook_events (received_at);
CREATE TABLE memberships (
	list_id INTEGER NOT NULL, 
	subscriber_id INTEGER NOT NULL, 
	status VARCHAR(20) NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (list_id, subscriber_id), 
	FOREIGN KEY(list_id) REFERENCES lists (id) ON DELETE CASCADE, 
	FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE
);
CREATE INDEX ix_memberships_list_status ON memberships (list_id, status);
CREATE TABLE events (
	id INTEGER NOT NULL, 
	subscriber_id INTEGER, 
	list_id INTEGER, 
	status VARCHAR(20) NOT NULL, 
	previous_status VARCHAR(20), 
	source VARCHAR(30) NOT NULL, 
	detail TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE, 
	FOREIGN KEY(list_id) REFERENCES lists (id) ON DELETE SET NULL
);
CREATE INDEX ix_events_subscriber ON events (subscriber_id);
CREATE TABLE campaigns (
	id INTEGER NOT NULL, 
	issue_date VARCHAR(10) NOT NULL, 
	list_id INTEGER NOT NULL, 
	subject TEXT NOT NULL, 
	html TEXT NOT NULL, 
	text TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	claimed_by VARCHAR(100), 
	claimed_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (issue_date, list_id), 
	FOREIGN KEY(list_id) REFERENCES lists (id)
);
CREATE TABLE campaign_stats (
	campaign_id INTEGER NOT NULL, 
	event VARCHAR(30) NOT NULL, 
	count INTEGER NOT NULL, 
	PRIMARY KEY (campaign_id, event), 
	FOREIGN KEY(campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE
);
CREATE TABLE batches (
	id INTEGER NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	state VARCHAR(20) NOT NULL, 
	size INTEGER NOT NULL, 
	message_id VARCHAR(200), 
	error TEXT, 
	started_at DATETIME, 
	finished_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE
);
CREATE INDEX ix_batches_campaign_state ON batches (campaign_id, state);
CREATE TABLE deliveries (
	id INTEGER NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	subscriber_id INTEGER NOT NULL, 
	email VARCHAR(320) NOT NULL, 
	batch_id INTEGER, 
	state VARCHAR(20) NOT NULL, 
	message_id VARCHAR(200), 
	error TEXT, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (campaign_id, subscriber_id), 
	FOREIGN KEY(campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE, 
	FOREIGN KEY(batch_id) REFERENCES batches (id)
);
CREATE INDEX ix_deliveries_campaign_state_id ON deliveries (campaign_id, state, id);
CREATE INDEX ix_deliveries_batch ON deliveries (batch_id);

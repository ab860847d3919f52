-- Who may add people to their own organisation, disable and re-enable them, and set a new
-- password for one who lost theirs (the portal's People page). Made with
-- `medbox-fleet person … --admin`.
ALTER TABLE people ADD COLUMN admin boolean NOT NULL DEFAULT false;

-- Who runs the fleet's organisations: creates them, adds each one's first administrator and puts
-- appliances in their care (the portal's Organisations page). Made with `medbox-fleet person …
-- --fleet-admin`. The page shows no patients: a fleet administrator's pages show only their own
-- organisation's.
ALTER TABLE people ADD COLUMN fleet_admin boolean NOT NULL DEFAULT false;

-- A password someone else chose (set when an administrator adds a person or resets their
-- password): the person may do nothing but choose their own until they have.
ALTER TABLE people ADD COLUMN first_password boolean NOT NULL DEFAULT false;

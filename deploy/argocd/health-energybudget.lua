-- Argo CD health of a wattkeeper.io EnergyBudget: Degraded when the spec is rejected, when the window's average
-- power is over the limit, or when the services under it cannot be measured; Healthy when it is allocated within
-- its limit (a budget whose services are degraded on purpose to stay within it is healthy: that is its job).
local hs = { status = "Progressing", message = "Waiting for the operator to account the budget" }

local function condition(conditions, kind)
  for _, c in ipairs(conditions or {}) do
    if c.type == kind then return c end
  end
  return nil
end

if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.message = "Waiting for the operator to act on generation " .. tostring(generation)
  return hs
end

local conditions = obj.status.conditions
local ready = condition(conditions, "Ready")
local within = condition(conditions, "WithinBudget")
local telemetry = condition(conditions, "TelemetryAvailable")

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
  return hs
end
if within ~= nil and within.status == "False" then
  hs.status = "Degraded"
  hs.message = (within.reason or "OverLimit") .. ": " .. (within.message or "")
  return hs
end
if telemetry ~= nil and telemetry.status == "False" then
  hs.status = "Degraded"
  hs.message = (telemetry.reason or "TelemetryUnavailable") .. ": " .. (telemetry.message or "")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Allocated"
  if within ~= nil and within.message ~= nil and within.message ~= "" then
    hs.message = hs.message .. "; " .. within.message
  end
  return hs
end
return hs

-- Argo CD health of a wattkeeper.io EnergyProfile. A profile is data: it is Healthy once it holds points, unless
-- a Ready condition (when something reports one) says the planner rejected it.
local hs = { status = "Healthy", message = "" }

local count = 0
if obj.spec ~= nil and obj.spec.points ~= nil then
  count = #obj.spec.points
end

if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" and c.status == "False" then
      hs.status = "Degraded"
      hs.message = (c.reason or "NotReady") .. ": " .. (c.message or "")
      return hs
    end
  end
end
if count == 0 then
  hs.status = "Degraded"
  hs.message = "no measured points"
  return hs
end
if obj.status ~= nil and obj.status.pointCount ~= nil then
  count = obj.status.pointCount
end
hs.message = tostring(count) .. " measured points"
return hs

// Event Grid system topic on the storage account: every blob written to the completions container
// raises Microsoft.Storage.BlobCreated, delivered to a Service Bus queue as the app's identity; the
// index_completions function builds the index from those events in batches.
// Schema: https://learn.microsoft.com/azure/event-grid/event-schema-blob-storage
// Managed-identity delivery: https://learn.microsoft.com/azure/event-grid/managed-service-identity
param name string
param location string
param tags object
param storageAccountName string
param containerName string
param serviceBusNamespaceName string
param queueName string
param identityName string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' existing = {
  parent: namespace
  name: queueName
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource completionsCreated 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: 'completions-created'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: ['Microsoft.Storage.BlobCreated']
      subjectBeginsWith: '/blobServices/default/containers/${containerName}/blobs/'
      subjectEndsWith: '.json'
    }
    deliveryWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: identity.id
      }
      destination: {
        endpointType: 'ServiceBusQueue'
        properties: { resourceId: queue.id }
      }
    }
    // Event Grid retries a failed delivery for up to 24 hours; the index sweep covers the rest.
    retryPolicy: { maxDeliveryAttempts: 30, eventTimeToLiveInMinutes: 1440 }
  }
}
